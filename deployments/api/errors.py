"""Every error the API returns, mapped in one place, and documented in the OpenAPI document.

Two shapes, as in Honcho v1.1.0's document: a 422 is ``{"detail": [{"loc", "msg", "type"}]}`` (its
``HTTPValidationError``) whether FastAPI's schema checks or Rapport's own found the problem, with ``loc``
naming the offending input; every other error is ``{"detail": "<what to fix>"}``. A store that cannot be
reached is a 503 with ``Retry-After``: clients and load balancers retry those, where a 500 reads as a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.llm.client import LLMConfigError, LLMError, LLMUnavailable
from storage.errors import ConflictError, InvalidError, NotFoundError, StorageError, UnavailableError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a 503 asks clients to wait before retrying

STATUS_BY_ERROR: dict[type[StorageError], int] = {
    NotFoundError: 404,
    ConflictError: 409,
}


class APIError(Exception):
    """An error raised by the HTTP layer itself (auth, unsupported operation...)."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers


def invalid_input(loc: Sequence[str | int], msg: str, type: str = "value_error") -> RequestValidationError:
    """A 422 for input the schema allows but Rapport does not, in the same shape as FastAPI's own."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": type}])


# --- the OpenAPI side --------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """Every error but a 422: a sentence that says what went wrong and what to do about it."""

    detail: str


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_DESCRIPTIONS = {
    400: "The body could not be read at all (a malformed multipart form)",
    401: "No API key, or one that is malformed, expired, or not permitted for this resource",
    404: "A resource the request names does not exist",
    405: "The operation is switched off in this server's configuration",
    409: "The request conflicts with what is stored (a name already taken, a concurrent change)",
    413: "The request body is larger than the server's limit (serve.max_body_bytes), or a file its own",
    415: "A file of a type the server does not read",
    429: "The app is over its request rate (limits.app_requests_per_s); retry after Retry-After seconds",
    501: "Not supported by this version of the server",
    503: "The database, the search index or (for the dialectic) the LLM cannot answer just now; retry "
    "after Retry-After seconds",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (FastAPI documents 422 by itself)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        documented[status] = {"model": ErrorDetail, "description": _DESCRIPTIONS[status]}
        if status == 503:
            documented[status]["headers"] = _RETRY_AFTER
    return documented


CONFLICT = responses(409)


def declare_error_statuses(document: dict[str, Any]) -> None:
    """Add to an OpenAPI document the statuses every operation can answer by its shape: 401 where a key
    is checked, 404 where it names a resource, 413 where it takes a body, 429 where it names an app (its
    request rate), 503 everywhere. Routes declare the others (409, 405, 501) themselves."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(ErrorDetail.__name__, ErrorDetail.model_json_schema())
    ref = {"$ref": f"#/components/schemas/{ErrorDetail.__name__}"}
    for path, item in document["paths"].items():
        for operation in item.values():
            params = operation.get("parameters", [])
            statuses = [503]
            if operation.get("security"):
                statuses.append(401)
            if "/name/{" in path or any(p["name"].endswith("_id") for p in params):
                statuses.append(404)
            if "requestBody" in operation:
                statuses.append(413)
            if any(p["name"] == "app_id" for p in params):
                statuses.append(429)
            declared = operation.setdefault("responses", {})
            for status in statuses:
                response = {
                    "description": _DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": ref}},
                }
                if status in (429, 503):
                    response["headers"] = _RETRY_AFTER
                declared.setdefault(str(status), response)


# --- the handlers ------------------------------------------------------------------------------------


def _loc(request: Request, field: Sequence[str | int]) -> list[str | int]:
    """Where a field named by the storage layer came from in this request: path, query or body."""
    if not field:
        return ["body"]
    dependant = getattr(request.scope.get("route"), "dependant", None)
    queried = {p.name for p in dependant.query_params} if dependant is not None else set()
    if field[0] in request.path_params:
        return ["path", *field]
    if field[0] in queried:
        return ["query", *field]
    return ["body", *field]


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _database_outage(_: Request, exc: Exception) -> JSONResponse:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    log.warning("database unavailable: %s", reason[0] if reason else type(exc).__name__)
    if isinstance(exc, sa.TimeoutError):
        return _unavailable("the database is overloaded: no connection became free in time; retry shortly")
    return _unavailable(
        "the database cannot be reached just now; retry shortly (/health shows when it is back)"
    )


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnavailableError)
    log.warning("%s unavailable: %s", exc.what, exc.detail)
    return _unavailable(exc.detail)


async def _llm_error(_: Request, exc: Exception) -> JSONResponse:
    """The model is down, overloaded or misconfigured: no answer now, and nothing stored was touched.
    A misconfiguration is a 503 too (500 reads as a bug), with the setting to change in the detail."""
    if isinstance(exc, LLMUnavailable):
        log.warning("LLM unavailable: %s", exc)
        return _unavailable(f"the language model cannot answer just now ({exc}); retry shortly")
    if isinstance(exc, LLMConfigError):
        log.error("LLM misconfigured: %s", exc)
        return _unavailable(f"the language model is misconfigured; an operator must fix a setting: {exc}")
    log.error("LLM failed: %s", exc)
    return _unavailable(f"the language model failed to answer ({exc}); retry shortly")


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidError)
    error = {"loc": _loc(request, exc.field), "msg": exc.detail, "type": "value_error"}
    return JSONResponse({"detail": [error]}, status_code=422)


async def _storage_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StorageError)
    return JSONResponse({"detail": exc.detail}, status_code=STATUS_BY_ERROR.get(type(exc), 400))


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # loc/msg/type as in the contract's HTTPValidationError; the offending input is not echoed back.
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI answers 400 for a body that is not UTF-8 and 422 for one that is not JSON: the same
        # mistake to a client, so both are the 422 of an unparseable body.
        error = {"loc": ["body"], "msg": "the body is not JSON text in UTF-8", "type": "json_invalid"}
        return JSONResponse({"detail": [error]}, status_code=422)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return await _database_outage(request, exc)
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


HANDLERS: dict[type[Exception], Any] = {
    InvalidError: _invalid,
    UnavailableError: _store_unavailable,
    StorageError: _storage_error,
    APIError: _api_error,
    LLMError: _llm_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    # Outages of the database: connections refused or dropped, a server shutting down, the pool
    # exhausted, a statement cancelled by statement_timeout. Other database errors are bugs: 500.
    sa.OperationalError: _database_outage,
    sa.InterfaceError: _database_outage,
    sa.TimeoutError: _database_outage,
    sa.DBAPIError: _database_error,
    Exception: _unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    for error, handler in HANDLERS.items():
        app.add_exception_handler(error, handler)
