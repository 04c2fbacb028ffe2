"""Request metrics as pure ASGI middleware, and ``/metrics`` for a plain (non-Ray) process."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.api.auth import require_admin
from pipelines import health
from rapport import metrics

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

UNMATCHED = "unmatched"  # 404s and scans: one series, not one per path tried
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "OTHER"


class RequestMetrics:
    """Counts each answered request and its duration by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            labels = {
                "method": scope["method"] if scope["method"] in METHODS else "OTHER",
                "route": getattr(route, "path", None) or UNMATCHED,
                "status": status,
            }
            metrics.HTTP_REQUESTS.inc(**labels)
            metrics.HTTP_DURATION.observe(time.perf_counter() - start, **labels)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_admin)])
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus' text format, in a process that records with prometheus_client. Under Ray, each node's
    metrics agent exports them instead (see docs/operations.md), and this answers 404 saying so. With auth
    on, it takes an admin key (the series name apps and routes)."""
    if metrics.exported_via_ray():
        return JSONResponse(
            {
                "detail": "under Ray Serve, metrics are exported by each Ray node's metrics agent "
                "(ray start --metrics-export-port), named ray_rapport_*; see docs/operations.md, Metrics for Prometheus"
            },
            404,
        )
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    memory = getattr(request.app.state, "memory", None)
    if memory is not None:
        try:
            await health.observe(memory.database, request.app.state.settings)
        except Exception as exc:  # the request counters still answer while the database is down
            log.warning("metrics: could not read the backlogs from the database: %s", exc)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
