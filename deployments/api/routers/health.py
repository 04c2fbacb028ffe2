"""Readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.api.params import DB

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/health")
async def health(database: DB) -> JSONResponse:
    """Ready when the database answers: 200 ``{"status": "ok"}``, else 503 with the reason."""
    try:
        await database.ping()
    except Exception:
        log.exception("health check: the database did not answer")
        return JSONResponse(
            {"status": "unavailable", "detail": "database unreachable; see the server log"}, 503
        )
    return JSONResponse({"status": "ok", "database": "ok"})
