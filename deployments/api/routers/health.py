"""Readiness: each dependency's state, and how far the index and the deriver are behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.api.errors import RETRY_AFTER_S
from deployments.api.params import Mem
from storage.index import MESSAGES

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


PROBE_TIMEOUT_S = 5.0


@router.get("/health")
async def health(memory: Mem, request: Request) -> JSONResponse:
    """Each dependency's state. 503 when the database does not answer (nothing works without it); else
    200, with ``status`` "degraded" when the embedder or the search index fails (writes are kept and
    indexed later; searches fail until it is back) or the LLM does not answer (chat and derivation
    wait). ``index`` also tells how many writes wait to reach the search index (``pending``), how old
    the oldest is (``oldest_s``), and how many failed for good (``parked``); ``deriver`` the same for
    messages waiting to be derived."""
    try:
        await memory.database.ping()
        lag = await memory.index_lag()
        work = await memory.derivation_lag()
    except Exception:
        log.exception("health check: the database did not answer")
        return JSONResponse(
            {
                "status": "unavailable",
                "database": "unreachable",
                "detail": "database unreachable; see the server log",
            },
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    llm = request.app.state.dialectic_llm
    embedder, index, llm_state = await asyncio.gather(
        _probe("embedder", memory.embedder.embed(["health"])),
        _probe("index", memory.index.count(MESSAGES)),
        _probe("llm", llm.probe()),
    )
    index_state = {
        "status": index,
        "pending": lag.pending,
        "parked": lag.parked,
        "oldest_s": round(lag.oldest_s, 3),
    }
    deriver = {"pending": work.pending, "parked": work.parked, "oldest_s": work.oldest_s}
    healthy = (
        embedder == "ok"
        and index == "ok"
        and (llm_state in ("ok", "configured") or llm_state.startswith("not loaded"))
    )
    return JSONResponse(
        {
            "status": "ok" if healthy else "degraded",
            "database": "ok",
            "embedder": embedder,
            "index": index_state,
            "llm": {"model": llm.name, "status": llm_state},
            "deriver": deriver,
        }
    )


async def _probe(what: str, call: Awaitable[object]) -> str:
    """ "ok", or why not, within PROBE_TIMEOUT_S."""
    try:
        result = await asyncio.wait_for(call, timeout=PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"unavailable: no answer in {PROBE_TIMEOUT_S:.0f}s"
    except Exception as exc:
        log.warning("health check: the %s failed: %s", what, exc)
        return f"unavailable: {type(exc).__name__}"
    return result if isinstance(result, str) else "ok"
