"""The FastAPI application: Honcho v1.1.0's routes plus /health, limits and error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

import rapport
from deployments.api.errors import install_error_handlers
from deployments.api.limits import BodySizeLimit
from deployments.api.routers import (
    apps,
    collections,
    documents,
    health,
    keys,
    messages,
    metamessages,
    sessions,
    users,
)
from rapport.settings import Settings
from storage import migrate
from storage.db import Database, resolve_database_url

log = logging.getLogger(__name__)

ROUTERS = (apps, users, sessions, messages, metamessages, collections, documents, keys, health)


def create_api(settings: Settings, database: Database | None = None) -> FastAPI:
    """Build the API. Without ``database``, it connects (and migrates) at start-up from ``settings``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database is not None:
            yield
            return
        url = await asyncio.to_thread(resolve_database_url, settings)
        if settings.db.migrate_on_start:
            await asyncio.to_thread(migrate.upgrade, url)
        app.state.database = Database(url, settings.db)
        log.info("API ready on %r", app.state.database)
        try:
            yield
        finally:
            await app.state.database.dispose()

    app = FastAPI(
        title="Rapport",
        summary="Memory and user models for LLM apps; Honcho v1.1.0 wire-compatible.",
        version=rapport.__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    if database is not None:
        app.state.database = database
    for module in ROUTERS:
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.serve.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the bearer key marked optional as in Honcho's (auth can be off)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for item in schema["paths"].values():
            for operation in item.values():
                if operation.get("security") == [{"HTTPBearer": []}]:
                    operation["security"].append({})
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
