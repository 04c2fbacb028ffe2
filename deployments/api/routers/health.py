"""Liveness and readiness: each dependency's state, and whether the index and the deriver keep up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.api.errors import RETRY_AFTER_S
from deployments.api.params import Mem
from pipelines import health as backlogs
from pipelines.memory import Memory
from rapport import metrics
from storage.index import MESSAGES

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


PROBE_TIMEOUT_S = 5.0


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process answers: nothing is probed (for a liveness check, called as often as you like)."""
    return {"status": "ok"}


class _Probed:
    """The last round of probes (embedder, index, LLM) and when it ran."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.at = 0.0
        self.states: tuple[str, str, str] | None = None


async def _probes(memory: Memory, request: Request) -> tuple[str, str, str]:
    state = request.app.state
    probed: _Probed = state.__dict__.setdefault("health_probes", _Probed())
    async with probed.lock:
        if probed.states is None or time.monotonic() - probed.at > state.settings.health.probe_interval_s:
            embedder, index, llm_state = await asyncio.gather(
                _probe("embedder", memory.embedder.embed(["health"])),
                _probe("index", memory.index.count(MESSAGES)),
                _probe("llm", state.dialectic_llm.probe()),
            )
            probed.states, probed.at = (embedder, index, llm_state), time.monotonic()
        return probed.states


@router.get("/health")
async def health_check(memory: Mem, request: Request) -> JSONResponse:
    """Each dependency's state. 503 when the database does not answer (nothing works without it); else
    200, with ``status`` "degraded" when the embedder or the search index fails (writes are kept and
    indexed later; searches fail until it is back), the LLM does not answer (chat and derivation wait),
    writes wait too long for the index, or derivation is paused or not progressing; ``problems`` says
    why. ``index`` tells how many writes wait to reach the search index (``pending``), how old the
    oldest is (``oldest_s``), and how many failed for good (``parked``); ``deriver`` the same for
    messages waiting to be derived, with its ``status``. The database is asked afresh each time (the
    backlogs are what callers wait on); the probes of the embedder, the index and the LLM run at most
    once per ``health.probe_interval_s`` per replica, and callers arriving together share one round."""
    settings = request.app.state.settings
    try:
        await memory.database.ping()
        found = await backlogs.observe(memory.database, settings)
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
    embedder, index, llm_state = await _probes(memory, request)
    problems = [reason for _, reason in found.problems]
    parts = {part for part, _ in found.problems}
    for part, state in (("embedder", embedder), ("index", index)):
        if state != "ok":
            problems.append(f"the {part} is {state}")
            parts.add(part)
    if not (llm_state in ("ok", "configured") or llm_state.startswith("not loaded")):
        problems.append(f"the LLM ({llm.name}) is {llm_state}")
        parts.add("llm")
    for part in metrics.HEALTH_PARTS:
        metrics.HEALTH_DEGRADED.set(float(part in parts), part=part)
    for problem in problems:
        log.warning("health: %s", problem)
    body: dict[str, Any] = {
        "status": "degraded" if problems else "ok",
        "database": "ok",
        "embedder": embedder,
        "index": {"status": index, **found.index},
        "llm": {"model": llm.name, "status": llm_state},
        "deriver": found.deriver,
        "dreams": found.dreams,
        "webhooks": found.webhooks,
    }
    if problems:
        body["problems"] = problems
    return JSONResponse(body)


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
