"""Apps: the top of the hierarchy. Names are unique across the server."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import translate_integrity_errors
from storage.ids import new_id
from storage.query import Page, fetch_one, fetch_page, get_or_create, update_one
from storage.tables import App
from storage.validation import check_id, check_metadata, check_name


async def create_app(db: AsyncSession, name: str, metadata: dict[str, Any] | None = None) -> App:
    name, metadata = check_name(name), check_metadata(metadata)
    with translate_integrity_errors(conflict=f"an app named {name!r} already exists"):
        return (
            await db.scalars(insert(App).values(id=new_id(), name=name, metadata_=metadata).returning(App))
        ).one()


async def get_app(db: AsyncSession, app_id: str) -> App:
    check_id(app_id, what="app")
    return await fetch_one(db, App, [App.id == app_id], f"app {app_id!r}")


async def get_app_by_name(db: AsyncSession, name: str) -> App:
    check_name(name)
    return await fetch_one(db, App, [App.name == name], f"app named {name!r}")


async def get_or_create_app(db: AsyncSession, name: str) -> App:
    """The app with this name, created if missing. Safe under concurrent callers: one row, one id."""
    name = check_name(name)
    values = {"id": new_id(), "name": name, "metadata_": {}}
    return await get_or_create(db, App, values, [App.name], f"app named {name!r}")


async def update_app(
    db: AsyncSession, app_id: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
) -> App:
    check_id(app_id, what="app")
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = check_name(name)
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    return await update_one(
        db,
        App,
        [App.id == app_id],
        values,
        f"app {app_id!r}",
        conflict=f"an app named {name!r} already exists",
    )


async def list_apps(
    db: AsyncSession,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[App]:
    return await fetch_page(db, App, [], filter=filter, reverse=reverse, page=page, size=size)
