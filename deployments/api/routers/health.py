"""Readiness, and how far the index is behind."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.api.errors import RETRY_AFTER_S
from deployments.api.params import Mem

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health(memory: Mem) -> JSONResponse:
    """200 when the database answers, else 503. ``index`` tells how many writes wait to reach the search
    index (``pending``), how old the oldest is (``oldest_s``), and how many failed for good (``parked``);
    ``deriver`` the same for messages waiting to be derived."""
    try:
        await memory.database.ping()
        lag = await memory.index_lag()
        work = await memory.derivation_lag()
    except Exception:
        log.exception("health check: the database did not answer")
        return JSONResponse(
            {"status": "unavailable", "detail": "database unreachable; see the server log"},
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    index = {"pending": lag.pending, "parked": lag.parked, "oldest_s": round(lag.oldest_s, 3)}
    deriver = {"pending": work.pending, "parked": work.parked, "oldest_s": work.oldest_s}
    return JSONResponse({"status": "ok", "database": "ok", "index": index, "deriver": deriver})
