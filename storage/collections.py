"""Collections of documents, per user. The name ``honcho`` is reserved for derived facts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    get_or_create,
    insert_under_parent,
    row_keys,
    update_one,
)
from storage.tables import Collection, User
from storage.users import get_user
from storage.validation import check_ids, check_metadata, check_name

RESERVED_NAME = "honcho"


OBSERVER_PREFIX = "observer:"  # collections of what another peer concludes about a user (v3)


def is_reserved(name: str) -> bool:
    return name.lower() == RESERVED_NAME


def _check_client_name(name: str) -> str:
    name = check_name(name)
    if is_reserved(name):
        raise InvalidError(
            f"the collection name {RESERVED_NAME!r} is reserved for derived facts; pick another",
            field=("name",),
        )
    if name.lower().startswith(OBSERVER_PREFIX):
        raise InvalidError(
            f"collection names starting with {OBSERVER_PREFIX!r} are reserved for peers' conclusions about "
            "each other; pick another",
            field=("name",),
        )
    return name


def _where(app_id: str, user_id: str, collection_id: str) -> Keys:
    return row_keys("collection", collection_id, user_id=user_id, app_id=app_id)


async def create_collection(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    name: str,
    metadata: dict[str, Any] | None = None,
    *,
    allow_reserved: bool = False,
) -> Record:
    """A new collection; only Rapport itself (``allow_reserved``) may create the reserved one."""
    check_ids(app=app_id, user=user_id)
    name = check_name(name) if allow_reserved else _check_client_name(name)
    return await insert_under_parent(
        db,
        Collection,
        {
            "id": new_id(),
            "app_id": app_id,
            "user_id": user_id,
            "name": name,
            "metadata_": check_metadata(metadata),
        },
        User,
        {"id": user_id, "app_id": app_id},
        f"user {user_id!r}",
        conflict=f"this user already has a collection named {name!r}",
    )


async def get_collection(db: AsyncConnection, app_id: str, user_id: str, collection_id: str) -> Record:
    return await fetch_one(
        db, Collection, _where(app_id, user_id, collection_id), f"collection {collection_id!r}"
    )


async def get_collection_by_name(db: AsyncConnection, app_id: str, user_id: str, name: str) -> Record:
    check_ids(app=app_id, user=user_id)
    check_name(name)
    where = {"user_id": user_id, "app_id": app_id, "name": name}
    return await fetch_one(db, Collection, where, f"collection named {name!r}")


async def update_collection(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    collection_id: str,
    *,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    if name is None and metadata is None:
        raise InvalidError("give a new name, new metadata, or both")
    where = _where(app_id, user_id, collection_id)
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = _check_client_name(name)
        current = await fetch_one(db, Collection, where, f"collection {collection_id!r}")
        if is_reserved(current.name):
            raise InvalidError(
                f"the {RESERVED_NAME!r} collection holds derived facts and cannot be renamed", field=("name",)
            )
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    return await update_one(
        db, Collection, where, values, f"collection {collection_id!r}",
        conflict=f"this user already has a collection named {name!r}",
    )  # fmt: skip


async def delete_collection(db: AsyncConnection, app_id: str, user_id: str, collection_id: str) -> None:
    """Delete the collection and every document in it."""
    collection = await get_collection(db, app_id, user_id, collection_id)
    if is_reserved(collection.name):
        raise InvalidError(
            f"the {RESERVED_NAME!r} collection holds derived facts and cannot be deleted",
            field=("collection_id",),
        )
    await db.execute(delete(Collection).where(Collection.id == collection.id))


async def list_collections(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    await get_user(db, app_id, user_id)
    where = {"user_id": user_id, "app_id": app_id}
    return await fetch_page(db, Collection, where, filter=filter, reverse=reverse, page=page, size=size)


async def get_or_create_reserved(db: AsyncConnection, app_id: str, user_id: str) -> Record:
    """The user's ``honcho`` collection, where derived facts are kept; created on first use."""
    await get_user(db, app_id, user_id)
    values = {"id": new_id(), "app_id": app_id, "user_id": user_id, "name": RESERVED_NAME, "metadata_": {}}
    return await get_or_create(db, Collection, values, ("user_id", "name"), f"{RESERVED_NAME} collection")


async def lock_reserved(db: AsyncConnection, owners: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The ``honcho`` collection of each (app_id, user_id), created if missing and locked until the
    transaction ends (one writer of a user's derived facts at a time), by user id. Two statements
    however many users; the caller has checked they exist."""
    if not owners:
        return {}
    await db.execute(
        pg_insert(Collection)
        .values(
            [
                {"id": new_id(), "app_id": app_id, "user_id": user_id, "name": RESERVED_NAME, "metadata_": {}}
                for app_id, user_id in owners
            ]
        )
        .on_conflict_do_nothing(index_elements=["user_id", "name"])
    )
    rows = await db.execute(
        select(Collection.user_id, Collection.id)
        .where(Collection.user_id.in_([user_id for _, user_id in owners]), Collection.name == RESERVED_NAME)
        .order_by(Collection.id)  # one lock order for every writer: no deadlock between groups
        .with_for_update()
    )
    return {row.user_id: row.id for row in rows}


# --- conclusions of one peer about another -------------------------------------------------------------

Pair = tuple[str, str]  # (observer's id, observed's id)


def observer_collection_name(observer_id: str) -> str:
    """The name of the collection of an observed peer that holds another peer's conclusions about it."""
    return f"{OBSERVER_PREFIX}{observer_id}"


def pair_collection_name(pair: Pair) -> str:
    observer, observed = pair
    return RESERVED_NAME if observer == observed else observer_collection_name(observer)


def _pairs_where(pairs: Sequence[Pair]) -> Any:
    return or_(
        *(
            and_(
                Collection.user_id == observed,
                Collection.name == pair_collection_name((observer, observed)),
                Collection.observer_id.is_(None)
                if observer == observed
                else Collection.observer_id == observer,
            )
            for observer, observed in pairs
        )
    )


def _pair_of(row: Any) -> Pair:
    return (row.observer_id or row.user_id, row.user_id)


async def pair_ids(db: AsyncConnection, pairs: Sequence[Pair]) -> dict[Pair, str]:
    """The collections of these (observer, observed) pairs that exist yet (read, not locked)."""
    if not pairs:
        return {}
    rows = await db.execute(
        select(Collection.id, Collection.user_id, Collection.observer_id).where(_pairs_where(pairs))
    )
    return {_pair_of(row): row.id for row in rows}


async def lock_pairs(db: AsyncConnection, app_id: str, pairs: Sequence[Pair]) -> dict[Pair, str]:
    """The collection of each (observer, observed) pair, created if missing and locked until the
    transaction ends, in one lock order for every writer (``lock_reserved``'s, which a pair of a peer
    with itself shares). Two statements however many pairs."""
    if not pairs:
        return {}
    pairs = sorted(set(pairs))  # made in one order by every writer too
    await db.execute(
        pg_insert(Collection)
        .values(
            [
                {
                    "id": new_id(),
                    "app_id": app_id,
                    "user_id": observed,
                    "observer_id": None if observer == observed else observer,
                    "name": pair_collection_name((observer, observed)),
                    "metadata_": {},
                }
                for observer, observed in pairs
            ]
        )
        .on_conflict_do_nothing(index_elements=["user_id", "name"])
    )
    rows = await db.execute(
        select(Collection.id, Collection.user_id, Collection.observer_id)
        .where(_pairs_where(pairs))
        .order_by(Collection.id)
        .with_for_update()
    )
    return {_pair_of(row): row.id for row in rows}
