"""v3 peer chat (the dialectic): what a peer knows about itself or another peer, asked in words."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from deployments.api.auth import Key
from deployments.api.params import Dial
from deployments.api.routers.sessions import STREAM_HEADERS
from deployments.api.v3 import schemas
from deployments.api.v3.access import denied, v3_key
from deployments.api.v3.params import PeerId, WorkspaceId
from models.llm.client import billed_to
from pipelines.context import PeerView
from pipelines.dialectic import Dialectic
from pipelines.dialectic.response_format import SchemaError, model_of
from storage import v3
from storage.errors import InvalidError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v3/workspaces/{workspace_id}/peers", tags=["peers"])


@router.post(
    "/{peer_id}/chat",
    response_model=schemas.DialecticResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat(
    dialectic: Dial,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    options: Annotated[schemas.DialecticOptions, Body()],
    key: Annotated[Key, Depends(v3_key)],
) -> Any:
    """Query a Peer's representation using natural language

    Answers from what the peer holds about the target (itself by default): its conclusions, the
    messages of the sessions they share, and, with session_id, that session's summaries and latest
    messages. reasoning_level sets how much is read (minimal: half the settings' depth; low: the
    settings'; medium, high, max: 1.5, 2 and 3 times, with the question rewritten into more searches
    first). filters.session_id limits recall to those sessions. response_format (a JSON Schema object)
    makes content a JSON string of that schema. With stream, server-sent events
    `data: {"delta": {"content": "..."}, "done": false}`, then `data: {"done": true}`; with a
    response_format the JSON arrives as one delta. Errors found before the first event (unknown peer or
    session, a bad schema, an LLM that is down) are answered with their status and a JSON detail."""
    allowlist = v3.session_allowlist(options.filters, must_include=options.session_id)
    output = _response_model(options.response_format)
    named = [*(allowlist or ()), *([options.session_id] if options.session_id else [])]
    # The session names arrive in the body, so a peer key's reach is checked here: its sessions only.
    member = None if key.admin else key.peer
    if member is not None and not await dialectic.memory.run(v3.member_of_all, workspace_id, member, named):
        raise denied()
    scope = await dialectic.memory.run(
        v3.chat_scope,
        workspace_id,
        peer_id,
        target=options.target,
        session=options.session_id,
        allowlist=allowlist,
    )
    view = PeerView(scope.app_id, scope.observer, scope.observed, scope.session_id, scope.sessions)
    leveled = Dialectic(dialectic.memory, dialectic.llm, dialectic.options.at(options.reasoning_level))
    with billed_to(scope.app_id, "dialectic"):  # a stream keeps its app when read on after this returns
        prepared = await leveled.prepare_peer(view, options.query)
        if output is not None:
            content = await leveled.complete_structured(prepared, output)
            if not options.stream:
                return schemas.DialecticResponse(content=content)
            events = _events(_once(content))
            return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)
        if not options.stream:
            return schemas.DialecticResponse(content=await leveled.complete(prepared) or None)
        pieces = leveled.stream_prepared(prepared)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = ""
    return StreamingResponse(_events(pieces, first), media_type="text/event-stream", headers=STREAM_HEADERS)


def _response_model(schema: dict[str, Any] | None) -> type[BaseModel] | None:
    if schema is None:
        return None
    try:
        return model_of(schema)
    except SchemaError as exc:
        raise InvalidError(f"response_format: {exc}", field=("response_format",)) from exc


async def _once(text: str) -> AsyncGenerator[str, None]:
    yield text


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _events(pieces: AsyncGenerator[str, None], first: str = "") -> AsyncGenerator[str, None]:
    """The answer as v3's server-sent events, ending with ``done``. The status is sent by now: a failure
    is logged and ends the stream without ``done`` (the client sees the answer cut short)."""
    try:
        if first:
            yield _event({"delta": {"content": first}, "done": False})
        async for piece in pieces:
            if piece:
                yield _event({"delta": {"content": piece}, "done": False})
        yield _event({"done": True})
    except Exception:
        log.exception("peer chat's answer broke off mid-stream")
    finally:
        await pieces.aclose()
