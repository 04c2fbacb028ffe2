"""Apps: the top of the hierarchy. Names are unique across the server."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.ids import new_id
from storage.query import Page, Record, fetch_one, fetch_page, get_or_create, insert_one, update_one
from storage.tables import App
from storage.validation import check_changes, check_id, check_metadata, check_name


async def create_app(db: AsyncConnection, name: str, metadata: dict[str, Any] | None = None) -> Record:
    name, metadata = check_name(name), check_metadata(metadata)
    values = {"id": new_id(), "name": name, "metadata_": metadata}
    return await insert_one(db, App, values, conflict=f"an app named {name!r} already exists")


async def get_app(db: AsyncConnection, app_id: str) -> Record:
    check_id(app_id, what="app")
    return await fetch_one(db, App, {"id": app_id}, f"app {app_id!r}")


async def get_app_by_name(db: AsyncConnection, name: str) -> Record:
    check_name(name)
    return await fetch_one(db, App, {"name": name}, f"app named {name!r}")


async def get_or_create_app(db: AsyncConnection, name: str) -> Record:
    """The app with this name, created if missing. Safe under concurrent callers: one row, one id."""
    name = check_name(name)
    values = {"id": new_id(), "name": name, "metadata_": {}}
    return await get_or_create(db, App, values, ("name",), f"app named {name!r}")


async def update_app(
    db: AsyncConnection, app_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
) -> Record:
    check_id(app_id, what="app")
    values = check_changes(name=name, metadata=metadata)
    return await update_one(
        db,
        App,
        {"id": app_id},
        values,
        f"app {app_id!r}",
        conflict=f"an app named {name!r} already exists",
    )


async def list_apps(
    db: AsyncConnection,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    return await fetch_page(db, App, {}, filter=filter, reverse=reverse, page=page, size=size)
