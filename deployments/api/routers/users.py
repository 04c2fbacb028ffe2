"""Users of an app."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query

from deployments.api import schemas
from deployments.api.auth import Key, current_key, id_from_key, require_app_key
from deployments.api.errors import CONFLICT
from deployments.api.params import AppId, Mem, PageNumber, PageSize
from deployments.api.ratelimit import admitted
from storage import users as store

router = APIRouter(prefix="/v1/apps/{app_id}/users", tags=["users"], dependencies=[Depends(admitted)])


@router.post("", response_model=schemas.User, responses=CONFLICT)
async def create_user(
    memory: Mem,
    app_id: AppId,
    user: Annotated[schemas.UserCreate, Body(description="User creation parameters")],
) -> schemas.User:
    """Create a new User"""
    return schemas.User.from_row(await memory.run(store.create_user, app_id, user.name, user.metadata))


@router.get("", response_model=schemas.User)
async def get_user(
    memory: Mem,
    app_id: AppId,
    key: Annotated[Key, Depends(current_key)],
    user_id: Annotated[
        str | None, Query(description="User ID to retrieve. If not provided, users JWT token")
    ] = None,
) -> schemas.User:
    """Get a User by ID; without ``user_id``, the user of the request's key."""
    user_id = id_from_key(user_id, key, "user_id")
    return schemas.User.from_row(await memory.run(store.get_user, app_id, user_id))


@router.post("/list", response_model=schemas.Page[schemas.User])
async def get_users(
    memory: Mem,
    app_id: AppId,
    options: Annotated[
        schemas.UserGet | None, Body(description="Filtering options for the users list")
    ] = None,
    reverse: Annotated[bool, Query(description="Whether to reverse the order of results")] = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.User]:
    """Get All Users for an App"""
    filter = options.filter if options else None
    result = await memory.run(store.list_users, app_id, filter=filter, reverse=reverse, page=page, size=size)
    return schemas.page_of(schemas.User, result)


@router.get("/name/{name}", response_model=schemas.User)
async def get_user_by_name(
    memory: Mem, app_id: AppId, name: Annotated[str, Path(description="Name of the user to retrieve")]
) -> schemas.User:
    """Get a User by name"""
    return schemas.User.from_row(await memory.run(store.get_user_by_name, app_id, name))


@router.get("/get_or_create/{name}", response_model=schemas.User, responses=CONFLICT)
async def get_or_create_user(
    memory: Mem, app_id: AppId, name: Annotated[str, Path(description="Name of the user to get or create")]
) -> schemas.User:
    """Get a User or create a new one by the input name"""
    return schemas.User.from_row(await memory.run(store.get_or_create_user, app_id, name))


@router.put("/{user_id}", response_model=schemas.User, responses=CONFLICT)
async def update_user(
    memory: Mem,
    app_id: AppId,
    user_id: Annotated[str, Path(description="ID of the user to update")],
    user: Annotated[schemas.UserUpdate, Body(description="Updated user parameters")],
) -> schemas.User:
    """Update a User's name and/or metadata"""
    updated = await memory.run(store.update_user, app_id, user_id, name=user.name, metadata=user.metadata)
    return schemas.User.from_row(updated)


@router.delete("/{user_id}", response_model=schemas.Erasure, dependencies=[Depends(require_app_key)])
async def delete_user(
    memory: Mem, app_id: AppId, user_id: Annotated[str, Path(description="ID of the user to erase")]
) -> schemas.Erasure:
    """Erase a User and everything of theirs: sessions, messages, metamessages, collections, documents,
    derivation work and batch-job rows, and their search index entries (a Rapport extension; needs an
    admin key or a key of the app). Atomic in PostgreSQL; the index follows at once or, after a crash,
    from the outbox."""
    erased = await memory.erase_user(app_id, user_id)
    return schemas.Erasure(messages=erased.messages, documents=erased.documents)
