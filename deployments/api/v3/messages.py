"""v3 messages of a session: create up to 100, list with filters, get, update metadata."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query

from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import MessageId, PageNumber, PageSize, SessionId, WorkspaceId
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
    items = [
        m.model_dump(include={"content", "peer_id", "metadata", "created_at"}) for m in messages.messages
    ]
    rows = await memory.add_peer_messages(workspace_id, session_id, items)
    return [
        schemas.Message.of(row, workspace_id, session_id, item["peer_id"])
        for row, item in zip(rows, items, strict=True)
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
    return schemas.page(items, found)


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
