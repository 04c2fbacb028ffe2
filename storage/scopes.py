"""Where a resource sits in the hierarchy: the app and user (and session or collection) that own it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError, NotFoundError
from storage.tables import App, Collection, Session, User
from storage.validation import check_id


@dataclass(frozen=True, slots=True)
class Scope:
    app_id: str
    user_id: str | None = None
    session_id: str | None = None
    collection_id: str | None = None


async def resolve_scope(
    db: AsyncConnection,
    *,
    app_id: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
    collection_id: str | None = None,
) -> Scope:
    """Fill in the owners of the most specific id given and check any ids given agree with them."""
    if session_id and collection_id:
        raise InvalidError("a scope names a session or a collection, not both", field=("collection_id",))
    if session_id:
        check_id(session_id, what="session")
        row = (
            await db.execute(select(Session.app_id, Session.user_id).where(Session.id == session_id))
        ).first()
        found = Scope(row.app_id, row.user_id, session_id=session_id) if row else None
    elif collection_id:
        check_id(collection_id, what="collection")
        row = (
            await db.execute(
                select(Collection.app_id, Collection.user_id).where(Collection.id == collection_id)
            )
        ).first()
        found = Scope(row.app_id, row.user_id, collection_id=collection_id) if row else None
    elif user_id:
        check_id(user_id, what="user")
        owner = (await db.execute(select(User.app_id).where(User.id == user_id))).scalar()
        found = Scope(owner, user_id) if owner else None
    elif app_id:
        check_id(app_id, what="app")
        found = Scope(app_id) if (await db.execute(select(App.id).where(App.id == app_id))).scalar() else None
    else:
        raise InvalidError(
            "name at least one of app_id, user_id, session_id, collection_id", field=("app_id",)
        )
    if found is None or (app_id and app_id != found.app_id) or (user_id and user_id != found.user_id):
        raise NotFoundError("no such resource with those ids")
    return found
