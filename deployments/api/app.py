"""The FastAPI application: Honcho v1.1.0's routes plus /health and search, limits and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

import rapport
from deployments.api.errors import declare_error_statuses, install_error_handlers
from deployments.api.limits import BodySizeLimit
from deployments.api.metrics import RequestMetrics
from deployments.api.metrics import router as metrics_router
from deployments.api.ratelimit import AppRateLimiter
from deployments.api.routers import (
    apps,
    collections,
    context,
    deriver,
    documents,
    health,
    keys,
    messages,
    metamessages,
    search,
    sessions,
    users,
)
from deployments.api.v3 import chat as v3_chat
from deployments.api.v3 import conclusions as v3_conclusions
from deployments.api.v3 import keys as v3_keys
from deployments.api.v3 import messages as v3_messages
from deployments.api.v3 import peers as v3_peers
from deployments.api.v3 import queue as v3_queue
from deployments.api.v3 import search as v3_search
from deployments.api.v3 import sessions as v3_sessions
from deployments.api.v3 import webhooks as v3_webhooks
from deployments.api.v3 import workspaces as v3_workspaces
from models.llm import LLMClient
from pipelines.memory import Memory
from pipelines.webhooks import Webhooks
from rapport.settings import Settings

log = logging.getLogger(__name__)

ROUTERS = (
    apps,
    users,
    sessions,
    messages,
    metamessages,
    collections,
    documents,
    search,
    context,
    deriver,
    keys,
    health,
)
V3_ROUTERS = (
    v3_workspaces.router,
    v3_peers.router,
    v3_chat.router,
    v3_sessions.router,
    v3_sessions.session_router,
    v3_messages.router,
    v3_search.router,
    v3_conclusions.router,
    v3_queue.router,
    v3_webhooks.router,
    v3_keys.router,
)

MemoryFactory = Callable[[Settings], AbstractAsyncContextManager[Memory]]


@asynccontextmanager
async def local_memory(settings: Settings) -> AsyncIterator[Memory]:
    """Everything in this process: the database, the embedding model, the index and its sync loop."""
    from cluster.stack import open_stack

    async with open_stack(settings, run_index_sync=True) as stack:
        yield stack.memory


def create_api(
    settings: Settings,
    memory: Memory | None = None,
    make_memory: MemoryFactory = local_memory,
    dialectic_llm: LLMClient | None = None,
) -> FastAPI:
    """Build the API around ``memory``, or around one ``make_memory`` builds at start-up.

    ``dialectic_llm``: the chat route's model (default: the settings', built on the first chat call, so
    that starting the API loads no model)."""
    from cluster.stack import LLMs

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                if memory is None:
                    app.state.memory = await stack.enter_async_context(make_memory(settings))
                    log.info("API ready on %r", app.state.memory.database)
                # Webhook deliveries that failed are retried from the API's processes (any of them).
                retries = asyncio.create_task(app.state.webhooks.run(app.state.memory.database, stop))
                try:
                    yield
                finally:
                    stop.set()
                    await retries
                    await app.state.webhooks.close()  # nudges under way finish first
        finally:
            if dialectic_llm is None:  # ours: release its connections (a no-op if never built)
                await app.state.dialectic_llm.close()

    app = FastAPI(
        title="Rapport",
        summary="Memory and user models for LLM apps; Honcho v1.1.0 and v3 wire-compatible.",
        version=rapport.__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.dialectic_llm = dialectic_llm or LLMs(settings)("dialectic")
    app.state.rate_limiter = AppRateLimiter.configured(settings.limits)
    app.state.webhooks = Webhooks(settings.webhook)
    if memory is not None:
        app.state.memory = memory
    # Requests try the routes in order: the busiest (messages, of either API) come first, which saved a
    # v3 message call a tenth of its time (bench/api.py); no two routers' paths overlap.
    ordered = [messages.router, v3_messages.router]
    ordered += [r for r in (*(m.router for m in ROUTERS), *V3_ROUTERS) if r not in ordered]
    for router in ordered:
        app.include_router(router)
    app.include_router(metrics_router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.serve.max_body_bytes)
    app.add_middleware(RequestMetrics)  # outermost: it also counts the 413s above
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the bearer key marked optional on /v1 as in Honcho v1.1.0's (auth can be
    off; v3's document marks it required), and every error status an operation can answer declared."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for path, item in schema["paths"].items():
            for operation in item.values():
                if operation.get("security") == [{"HTTPBearer": []}] and not path.startswith("/v3/"):
                    operation["security"].append({})
        declare_error_statuses(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def asgi_app() -> FastAPI:
    """The API from the usual settings sources, for any ASGI server:
    ``uvicorn --factory deployments.api.app:asgi_app`` (no Ray; one process, no autoscaling)."""
    from rapport.logs import configure_logging
    from rapport.settings import get_settings

    settings = get_settings()
    configure_logging(settings.app.log_level)
    return create_api(settings)
