"""Metamessages of a user."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from deployments.api import schemas
from deployments.api.params import DB, AppId, PageNumber, PageSize, Reverse, UserId
from deployments.api.ratelimit import admitted
from storage import metamessages as store

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/metamessages",
    tags=["metamessages"],
    dependencies=[Depends(admitted)],
)


@router.post("", response_model=schemas.Metamessage)
async def create_metamessage(
    database: DB,
    app_id: AppId,
    user_id: UserId,
    metamessage: Annotated[schemas.MetamessageCreate, Body(description="Metamessage creation parameters")],
) -> schemas.Metamessage:
    """Create a new metamessage associated with a user.
    Optionally link to a session and message by providing those IDs in the request body."""
    async with database.transaction() as db:
        created = await store.create_metamessage(
            db,
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
    database: DB,
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
    async with database.transaction() as db:
        result = await store.list_metamessages(
            db,
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
    database: DB,
    app_id: AppId,
    user_id: UserId,
    metamessage_id: Annotated[str, Path(description="ID of the metamessage to retrieve")],
) -> schemas.Metamessage:
    """Get a specific Metamessage by ID"""
    async with database.transaction() as db:
        return schemas.Metamessage.from_row(await store.get_metamessage(db, app_id, user_id, metamessage_id))


@router.put("/{metamessage_id}", response_model=schemas.Metamessage)
async def update_metamessage(
    database: DB,
    app_id: AppId,
    user_id: UserId,
    metamessage_id: Annotated[str, Path(description="ID of the metamessage to update")],
    metamessage: Annotated[schemas.MetamessageUpdate, Body(description="Updated metamessage parameters")],
) -> schemas.Metamessage:
    """Update a metamessage's metadata, type, or relationships"""
    async with database.transaction() as db:
        updated = await store.update_metamessage(
            db,
            app_id,
            user_id,
            metamessage_id,
            label=metamessage.metamessage_type,
            session_id=metamessage.session_id,
            message_id=metamessage.message_id,
            metadata=metamessage.metadata,
        )
    return schemas.Metamessage.from_row(updated)
