"""v3 messages of a session: create up to 100, list with filters, get, update metadata."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, File, Form, Query, UploadFile

from deployments.api.errors import APIError, invalid_input, responses
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import MessageId, PageNumber, PageSize, SessionId, WorkspaceId
from pipelines import uploads
from storage import v3

router = APIRouter(
    prefix="/v3/workspaces/{workspace_id}/sessions/{session_id}/messages",
    tags=["messages"],
    dependencies=[Depends(v3_key)],
)


@router.post("", response_model=list[schemas.Message], status_code=201)
async def create_messages_for_session(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    messages: Annotated[schemas.MessageBatchCreate, Body(description="Batch of messages to create")],
) -> list[schemas.Message]:
    """Create up to 100 messages in a Session, in order

    The workspace, the session and the senders are made if missing, and a sender that is not a member
    joins the session. Each message's token_count is an offline estimate (no tokenizer download)."""
    items: list[dict[str, Any]] = [
        {"content": m.content, "peer_id": m.peer_id, "metadata": m.metadata, "created_at": m.created_at}
        for m in messages.messages
    ]
    rows = await memory.add_peer_messages(workspace_id, session_id, items)
    return [
        schemas.Message.of(row, workspace_id, session_id, m.peer_id)
        for row, m in zip(rows, messages.messages, strict=True)
    ]


@router.post("/list", response_model=schemas.Page[schemas.Message])
async def get_messages(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    options: Annotated[
        schemas.MessageGet | None, Body(description="Filtering options for the message list")
    ] = None,
    reverse: Annotated[bool | None, Query(description="Whether to reverse the order of results")] = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Message]:
    """Get a Session's messages, oldest first (filters: peer_id, token_count, created_at, metadata...)"""
    found = await memory.run(
        v3.list_messages_in,
        workspace_id,
        session_id,
        filters=options.filters if options else None,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    items = [schemas.Message.of(row, workspace_id, session_id, row.peer_name) for row in found.items]
    return schemas.page(schemas.Message, items, found)


@router.get("/{message_id}", response_model=schemas.Message)
async def get_message(
    memory: Mem, workspace_id: WorkspaceId, session_id: SessionId, message_id: MessageId
) -> schemas.Message:
    """Get a Message by ID"""
    row = await memory.run(v3.message_in, workspace_id, session_id, message_id)
    return schemas.Message.of(row, workspace_id, session_id, row.peer_name)


@router.put("/{message_id}", response_model=schemas.Message)
async def update_message(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    message_id: MessageId,
    message: Annotated[schemas.MessageUpdate, Body(description="Updated message parameters")],
) -> schemas.Message:
    """Update a Message's metadata (replaced when given)"""
    row = await memory.run(v3.update_message_in, workspace_id, session_id, message_id, message.metadata)
    return schemas.Message.of(row, workspace_id, session_id, row.peer_name)


@router.post(
    "/upload", response_model=list[schemas.Message], status_code=201, responses=responses(400, 413, 415)
)
async def create_messages_with_file(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    file: Annotated[UploadFile, File()],
    peer_id: Annotated[str, Form()],
    metadata: Annotated[str | None, Form()] = None,
    configuration: Annotated[str | None, Form()] = None,
    created_at: Annotated[str | None, Form()] = None,
) -> list[schemas.Message]:
    """Create messages from a file (PDF, text or JSON, at most 5 MB), cut at 25,000 characters

    Each piece is a message of peer_id, with the metadata given (a JSON object, as text)."""
    data = await file.read(uploads.FILE_MAX_BYTES + 1)
    if len(data) > uploads.FILE_MAX_BYTES:
        raise APIError(413, f"the file is over {uploads.FILE_MAX_BYTES // (1024 * 1024)} MB; split it")
    meta = _json_object(metadata, "metadata")
    try:
        text = uploads.text_of(data, file.content_type or "", file.filename or "the file")
    except uploads.UnsupportedFile as exc:
        raise APIError(415, str(exc)) from exc
    items = [
        {"content": piece, "peer_id": peer_id, "metadata": meta, "created_at": _time(created_at)}
        for piece in uploads.chunks(text)
    ]
    rows: list[Any] = []
    for start in range(0, len(items), 100):  # a batch holds 100 messages
        rows += await memory.add_peer_messages(workspace_id, session_id, items[start : start + 100])
    return [schemas.Message.of(row, workspace_id, session_id, peer_id) for row in rows]


def _json_object(value: str | None, name: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise invalid_input(("body", name), f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(parsed, dict):
        raise invalid_input(("body", name), f"{name} must be a JSON object")
    return parsed


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise invalid_input(("body", "created_at"), f"created_at must be an ISO-8601 time: {exc}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
