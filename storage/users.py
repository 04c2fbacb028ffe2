"""Users of an app. Names are unique within their app."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.apps import get_app
from storage.ids import new_id
from storage.query import Page, Record, fetch_one, fetch_page, get_or_create, insert_under_parent, update_one
from storage.tables import App, User
from storage.validation import check_changes, check_id, check_ids, check_metadata, check_name


async def create_user(
    db: AsyncConnection, app_id: str, name: str, metadata: dict[str, Any] | None = None
) -> Record:
    check_id(app_id, what="app")
    name, metadata = check_name(name), check_metadata(metadata)
    return await insert_under_parent(
        db,
        User,
        {"id": new_id(), "app_id": app_id, "name": name, "metadata_": metadata},
        App,
        {"id": app_id},
        f"app {app_id!r}",
        conflict=f"a user named {name!r} already exists in this app",
    )


async def get_user(db: AsyncConnection, app_id: str, user_id: str) -> Record:
    check_ids(app=app_id, user=user_id)
    return await fetch_one(db, User, {"id": user_id, "app_id": app_id}, f"user {user_id!r}")


async def get_user_by_name(db: AsyncConnection, app_id: str, name: str) -> Record:
    check_id(app_id, what="app")
    check_name(name)
    return await fetch_one(db, User, {"app_id": app_id, "name": name}, f"user named {name!r}")


async def get_or_create_user(db: AsyncConnection, app_id: str, name: str) -> Record:
    """The user with this name in the app, created if missing. Safe under concurrent callers."""
    name = check_name(name)
    await get_app(db, app_id)  # a clear 'app not found' rather than a foreign-key error
    values = {"id": new_id(), "app_id": app_id, "name": name, "metadata_": {}}
    return await get_or_create(db, User, values, ("app_id", "name"), f"user named {name!r}")


async def update_user(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    *,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    check_ids(app=app_id, user=user_id)
    values = check_changes(name=name, metadata=metadata)
    return await update_one(
        db,
        User,
        {"id": user_id, "app_id": app_id},
        values,
        f"user {user_id!r}",
        conflict=f"a user named {name!r} already exists in this app",
    )


async def list_users(
    db: AsyncConnection,
    app_id: str,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """The app's users, without the assistant peer Rapport made for its v1 sessions (v1 apps never
    created it; v3 lists it as a peer)."""
    await get_app(db, app_id)
    return await fetch_page(
        db, User, {"app_id": app_id, "assistant": False}, filter=filter, reverse=reverse, page=page, size=size
    )
