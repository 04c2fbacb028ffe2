"""Apps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query

from deployments.api import schemas
from deployments.api.auth import Key, current_key, id_from_key, require_admin
from deployments.api.errors import CONFLICT
from deployments.api.params import Mem, PageNumber, PageSize, Reverse
from deployments.api.ratelimit import admitted
from storage import apps as store

router = APIRouter(prefix="/v1/apps", tags=["apps"], dependencies=[Depends(admitted)])
admin = [Depends(require_admin)]


@router.get("", response_model=schemas.App)
async def get_app(
    memory: Mem,
    key: Annotated[Key, Depends(current_key)],
    app_id: Annotated[
        str | None, Query(description="App ID to retrieve. If not provided, uses JWT token")
    ] = None,
) -> schemas.App:
    """Get an App by ID; without ``app_id``, the app of the request's key."""
    app_id = id_from_key(app_id, key, "app_id")
    return schemas.App.from_row(await memory.run(store.get_app, app_id))


@router.post("", response_model=schemas.App, dependencies=admin, responses=CONFLICT)
async def create_app(
    memory: Mem, app: Annotated[schemas.AppCreate, Body(description="App creation parameters")]
) -> schemas.App:
    """Create a new App"""
    return schemas.App.from_row(await memory.run(store.create_app, app.name, app.metadata))


@router.post("/list", response_model=schemas.Page[schemas.App], dependencies=admin)
async def get_all_apps(
    memory: Mem,
    options: Annotated[
        schemas.AppGet | None, Body(description="Filtering and pagination options for the apps list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.App]:
    """Get all Apps"""
    filter = options.filter if options else None
    result = await memory.run(store.list_apps, filter=filter, reverse=bool(reverse), page=page, size=size)
    return schemas.page_of(schemas.App, result)


@router.get("/name/{name}", response_model=schemas.App, dependencies=admin)
async def get_app_by_name(
    memory: Mem, name: Annotated[str, Path(description="Name of the app to retrieve")]
) -> schemas.App:
    """Get an App by Name"""
    return schemas.App.from_row(await memory.run(store.get_app_by_name, name))


@router.get("/get_or_create/{name}", response_model=schemas.App, dependencies=admin, responses=CONFLICT)
async def get_or_create_app(
    memory: Mem, name: Annotated[str, Path(description="Name of the app to get or create")]
) -> schemas.App:
    """Get or Create an App"""
    return schemas.App.from_row(await memory.run(store.get_or_create_app, name))


@router.put("/{app_id}", response_model=schemas.App, responses=CONFLICT)
async def update_app(
    memory: Mem,
    app_id: Annotated[str, Path(description="ID of the app to update")],
    app: Annotated[schemas.AppUpdate, Body(description="Updated app parameters")],
) -> schemas.App:
    """Update an App"""
    return schemas.App.from_row(
        await memory.run(store.update_app, app_id, name=app.name, metadata=app.metadata)
    )


@router.delete("/{app_id}", response_model=schemas.Erasure, dependencies=admin)
async def delete_app(
    memory: Mem, app_id: Annotated[str, Path(description="ID of the app to erase")]
) -> schemas.Erasure:
    """Erase an App and everything in it: its users and all of theirs, and its batch jobs (a Rapport
    extension; needs an admin key)."""
    erased = await memory.erase_app(app_id)
    return schemas.Erasure(messages=erased.messages, documents=erased.documents)
