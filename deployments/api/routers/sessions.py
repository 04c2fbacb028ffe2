"""Sessions of a user."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import StreamingResponse

from deployments.api import schemas
from deployments.api.auth import Key, current_key, id_from_key
from deployments.api.params import AppId, Dial, Mem, PageNumber, PageSize, Reverse, SessionId, UserId
from deployments.api.ratelimit import admitted
from models.llm.client import billed_to
from storage import sessions as store

log = logging.getLogger(__name__)
# A streamed answer's headers: proxies that buffer (nginx) would hold it back until it is complete.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/sessions",
    tags=["sessions"],
    dependencies=[Depends(admitted)],
)


@router.get("", response_model=schemas.Session)
async def get_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    key: Annotated[Key, Depends(current_key)],
    session_id: Annotated[
        str | None, Query(description="Session ID to retrieve. If not provided, uses JWT token")
    ] = None,
) -> schemas.Session:
    """Get a session of the user, active or not; without ``session_id``, the session of the request's key."""
    session_id = id_from_key(session_id, key, "session_id")
    return schemas.Session.from_row(await memory.run(store.get_session, app_id, user_id, session_id))


@router.post("", response_model=schemas.Session)
async def create_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session: Annotated[schemas.SessionCreate, Body(description="Session creation parameters")],
) -> schemas.Session:
    """Create a Session for a User"""
    return schemas.Session.from_row(await memory.create_session(app_id, user_id, session.metadata))


@router.post("/list", response_model=schemas.Page[schemas.Session])
async def get_sessions(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    options: Annotated[
        schemas.SessionGet | None, Body(description="Filtering and pagination options for the sessions list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Session]:
    """Get All Sessions for a User (``is_active: true`` keeps only active ones)"""
    options = options or schemas.SessionGet()
    result = await memory.run(
        store.list_sessions,
        app_id,
        user_id,
        is_active=options.is_active,
        filter=options.filter,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    return schemas.page_of(schemas.Session, result)


@router.put("/{session_id}", response_model=schemas.Session)
async def update_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: Annotated[str, Path(description="ID of the session to update")],
    session: Annotated[schemas.SessionUpdate, Body(description="Updated session parameters")],
) -> schemas.Session:
    """Update the metadata of a Session"""
    updated = await memory.run(store.update_session, app_id, user_id, session_id, session.metadata)
    return schemas.Session.from_row(updated)


@router.delete("/{session_id}", response_model=None)
async def delete_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: Annotated[str, Path(description="ID of the session to delete")],
) -> dict[str, Any]:
    """Delete a session by marking it as inactive"""
    await memory.run(store.delete_session, app_id, user_id, session_id)
    return {"message": "Session deleted successfully"}


@router.post(
    "/{session_id}/chat",
    response_model=schemas.DialecticResponse,
    responses={
        200: {
            "description": "Response to a question informed by Honcho's User Representation",
            "content": {"text/event-stream": {}},
        }
    },
)
async def chat(
    dialectic: Dial,
    app_id: AppId,
    user_id: UserId,
    session_id: SessionId,
    options: Annotated[schemas.DialecticOptions, Body(description="Dialectic Endpoint Parameters")],
    key: Annotated[Key, Depends(current_key)],
) -> Any:
    """Chat with the Dialectic API

    Answers from what Rapport knows about the user (facts, summaries, relevant and recent messages).
    With ``stream``, the answer's text arrives as it is written, as raw chunks (``text/event-stream``
    without ``data:`` framing, as Honcho v1.1.0 sent it). Errors found before the first chunk (unknown
    ids, an LLM that is down or misconfigured) are answered with their status and a JSON detail.
    A key scoped to the session answers from that session alone (its messages, summaries and the facts
    derived from them), since the key reaches no other session of the user."""
    session_only = key.session_id is not None and not key.admin
    with billed_to(app_id, "dialectic"):  # a stream keeps its app when read on after this returns
        if not options.stream:
            content = await dialectic.answer(
                app_id, user_id, session_id, options.queries, session_only=session_only
            )
            return schemas.DialecticResponse(content=content)
        pieces = dialectic.stream(app_id, user_id, session_id, options.queries, session_only=session_only)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = ""
    return StreamingResponse(_rest_of(first, pieces), media_type="text/event-stream", headers=STREAM_HEADERS)


async def _rest_of(first: str, pieces: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """The answer after its first chunk. The status is sent by now: a failure is logged and ends the
    stream early (the client sees a short answer), it cannot become an error response."""
    try:
        if first:
            yield first
        async for piece in pieces:
            yield piece
    except Exception:
        log.exception("the dialectic's answer broke off mid-stream")
    finally:
        await pieces.aclose()


@router.get(
    "/{session_id}/clone",
    response_model=schemas.Session,
    description="Clone a session, optionally up to a specific message\n\n"
    f"Copies at most {store.CLONE_MAX:,} messages (and, with `deep_copy`, {store.CLONE_MAX:,} metamessages): "
    "past that the answer is 422, and `message_id` can cut the clone off earlier. The copies are "
    "searchable once indexed (seconds; /health shows the lag).",
)
async def clone_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: Annotated[str, Path(description="ID of the session to clone")],
    message_id: Annotated[str | None, Query(description="Message ID to cut off the clone at")] = None,
    deep_copy: Annotated[bool, Query(description="Whether to deep copy metamessages")] = False,
) -> schemas.Session:
    """Clone a session, optionally up to a specific message"""
    clone = await memory.clone_session(
        app_id, user_id, session_id, message_id=message_id, deep_copy=deep_copy
    )
    return schemas.Session.from_row(clone)
