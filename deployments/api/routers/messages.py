"""Messages in a session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from deployments.api import schemas
from deployments.api.params import AppId, Mem, PageNumber, PageSize, Reverse, SessionId, UserId
from deployments.api.ratelimit import admitted
from storage import messages as store

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/sessions/{session_id}/messages",
    tags=["messages"],
    dependencies=[Depends(admitted)],
)
MessageId = Annotated[str, Path(description="ID of the message to retrieve")]


@router.post("", response_model=schemas.Message)
async def create_message_for_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: SessionId,
    message: Annotated[schemas.MessageCreate, Body(description="Message creation parameters")],
) -> schemas.Message:
    """Adds a message to a session"""
    created = await memory.add_message(
        app_id,
        user_id,
        session_id,
        content=message.content,
        is_user=message.is_user,
        metadata=message.metadata,
    )
    return schemas.Message.from_row(created)


@router.post("/batch", response_model=list[schemas.Message])
async def create_batch_messages_for_session(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: SessionId,
    batch: Annotated[schemas.MessageBatchCreate, Body(description="Batch of messages to create")],
) -> list[schemas.Message]:
    """Bulk create messages for a session while maintaining order. Maximum 100 messages per batch."""
    rows = [m.model_dump() for m in batch.messages]
    created = await memory.add_messages(app_id, user_id, session_id, rows)
    return [schemas.Message.from_row(m) for m in created]


@router.post("/list", response_model=schemas.Page[schemas.Message])
async def get_messages(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: SessionId,
    options: Annotated[
        schemas.MessageGet | None, Body(description="Filtering options for the messages list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Message]:
    """Get all messages for a session"""
    filter = options.filter if options else None
    result = await memory.run(
        store.list_messages,
        app_id,
        user_id,
        session_id,
        filter=filter,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    return schemas.page_of(schemas.Message, result)


@router.get("/{message_id}", response_model=schemas.Message)
async def get_message(
    memory: Mem, app_id: AppId, user_id: UserId, session_id: SessionId, message_id: MessageId
) -> schemas.Message:
    """Get a Message by ID"""
    return schemas.Message.from_row(
        await memory.run(store.get_message, app_id, user_id, session_id, message_id)
    )


@router.put("/{message_id}", response_model=schemas.Message)
async def update_message(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    session_id: SessionId,
    message_id: Annotated[str, Path(description="ID of the message to update")],
    message: Annotated[schemas.MessageUpdate, Body(description="Updated message parameters")],
) -> schemas.Message:
    """Update the metadata of a Message"""
    updated = await memory.update_message(app_id, user_id, session_id, message_id, message.metadata)
    return schemas.Message.from_row(updated)
