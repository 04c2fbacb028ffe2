"""Collections of documents, per user."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query

from deployments.api import schemas
from deployments.api.auth import Key, current_key, id_from_key
from deployments.api.errors import CONFLICT
from deployments.api.params import AppId, Mem, PageNumber, PageSize, Reverse, UserId
from deployments.api.ratelimit import admitted
from storage import collections as store

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/collections",
    tags=["collections"],
    dependencies=[Depends(admitted)],
)


@router.get("", response_model=schemas.Collection)
async def get_collection(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    key: Annotated[Key, Depends(current_key)],
    collection_id: Annotated[
        str | None, Query(description="Collection ID to retrieve. If not provided, uses JWT token")
    ] = None,
) -> schemas.Collection:
    """Get a collection of the user; without ``collection_id``, the collection of the request's key."""
    collection_id = id_from_key(collection_id, key, "collection_id")
    return schemas.Collection.from_row(await memory.run(store.get_collection, app_id, user_id, collection_id))


@router.post("", response_model=schemas.Collection, responses=CONFLICT)
async def create_collection(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection: Annotated[schemas.CollectionCreate, Body(description="Collection creation parameters")],
) -> schemas.Collection:
    """Create a new Collection (the name ``honcho`` is reserved)"""
    created = await memory.run(store.create_collection, app_id, user_id, collection.name, collection.metadata)
    return schemas.Collection.from_row(created)


@router.post("/list", response_model=schemas.Page[schemas.Collection])
async def get_collections(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    options: Annotated[
        schemas.CollectionGet | None, Body(description="Filtering options for the collections list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Collection]:
    """Get All Collections for a User"""
    filter = options.filter if options else None
    result = await memory.run(
        store.list_collections, app_id, user_id, filter=filter, reverse=bool(reverse), page=page, size=size
    )
    return schemas.page_of(schemas.Collection, result)


@router.get("/name/{name}", response_model=schemas.Collection)
async def get_collection_by_name(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    name: Annotated[str, Path(description="Name of the collection to retrieve")],
) -> schemas.Collection:
    """Get a Collection by Name"""
    return schemas.Collection.from_row(await memory.run(store.get_collection_by_name, app_id, user_id, name))


@router.put("/{collection_id}", response_model=schemas.Collection, responses=CONFLICT)
async def update_collection(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: Annotated[str, Path(description="ID of the collection to update")],
    collection: Annotated[schemas.CollectionUpdate, Body(description="Updated collection parameters")],
) -> schemas.Collection:
    """Update a Collection's name or metadata"""
    updated = await memory.run(
        store.update_collection,
        app_id,
        user_id,
        collection_id,
        name=collection.name,
        metadata=collection.metadata,
    )
    return schemas.Collection.from_row(updated)


@router.delete("/{collection_id}", response_model=None)
async def delete_collection(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: Annotated[str, Path(description="ID of the collection to delete")],
) -> dict[str, Any]:
    """Delete a Collection and its documents"""
    await memory.delete_collection(app_id, user_id, collection_id)
    return {"message": "Collection deleted successfully"}
