"""Metamessages of a user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from deployments.api import schemas
from deployments.api.params import AppId, Mem, PageNumber, PageSize, Reverse, UserId
from deployments.api.ratelimit import admitted
from storage import metamessages as store

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/metamessages",
    tags=["metamessages"],
    dependencies=[Depends(admitted)],
)


@router.post("", response_model=schemas.Metamessage)
async def create_metamessage(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    metamessage: Annotated[schemas.MetamessageCreate, Body(description="Metamessage creation parameters")],
) -> schemas.Metamessage:
    """Create a new metamessage associated with a user.
    Optionally link to a session and message by providing those IDs in the request body."""
    created = await memory.run(
        store.create_metamessage,
        app_id,
        user_id,
        label=metamessage.metamessage_type,
        content=metamessage.content,
        session_id=metamessage.session_id,
        message_id=metamessage.message_id,
        metadata=metamessage.metadata,
    )
    return schemas.Metamessage.from_row(created)


@router.post("/list", response_model=schemas.Page[schemas.Metamessage])
async def get_metamessages(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    options: Annotated[
        schemas.MetamessageGet | None, Body(description="Filtering options for the metamessages list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Metamessage]:
    """Get metamessages with flexible filtering: by session, message, type (label) and metadata."""
    options = options or schemas.MetamessageGet()
    result = await memory.run(
        store.list_metamessages,
        app_id,
        user_id,
        label=options.metamessage_type,
        session_id=options.session_id,
        message_id=options.message_id,
        filter=options.filter,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    return schemas.page_of(schemas.Metamessage, result)


@router.get("/{metamessage_id}", response_model=schemas.Metamessage)
async def get_metamessage(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    metamessage_id: Annotated[str, Path(description="ID of the metamessage to retrieve")],
) -> schemas.Metamessage:
    """Get a specific Metamessage by ID"""
    return schemas.Metamessage.from_row(
        await memory.run(store.get_metamessage, app_id, user_id, metamessage_id)
    )


@router.put("/{metamessage_id}", response_model=schemas.Metamessage)
async def update_metamessage(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    metamessage_id: Annotated[str, Path(description="ID of the metamessage to update")],
    metamessage: Annotated[schemas.MetamessageUpdate, Body(description="Updated metamessage parameters")],
) -> schemas.Metamessage:
    """Update a metamessage's metadata, type, or relationships"""
    updated = await memory.run(
        store.update_metamessage,
        app_id,
        user_id,
        metamessage_id,
        label=metamessage.metamessage_type,
        session_id=metamessage.session_id,
        message_id=metamessage.message_id,
        metadata=metamessage.metadata,
    )
    return schemas.Metamessage.from_row(updated)
