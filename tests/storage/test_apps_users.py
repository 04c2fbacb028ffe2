"""Apps and users: CRUD, lists, race-safe get-or-create, and bad input that leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from storage import apps, users
from storage.db import Database
from storage.errors import ConflictError, InvalidError, NotFoundError
from storage.tables import App, User


async def _count(database: Database, model: type) -> int:
    async with database.transaction() as db:
        return (await db.execute(select(func.count()).select_from(model))).scalar_one()


async def test_app_create_get_update_list(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "demo", {"tier": "free"})
    assert len(app.id) == 21 and app.name == "demo" and app.metadata_ == {"tier": "free"}
    assert app.created_at.tzinfo is not None

    async with database.transaction() as db:
        assert (await apps.get_app(db, app.id)).name == "demo"
        assert (await apps.get_app_by_name(db, "demo")).id == app.id
        updated = await apps.update_app(db, app.id, name="demo2", metadata={"tier": "pro"})
    assert (updated.id, updated.name, updated.metadata_) == (app.id, "demo2", {"tier": "pro"})

    async with database.transaction() as db:
        only_name = await apps.update_app(db, app.id, name="demo3")
    assert only_name.metadata_ == {"tier": "pro"}, "fields left out of an update are kept"


async def test_list_pages_filters_and_reverses(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "lists")
        for i in range(7):
            await users.create_user(db, app.id, f"u{i}", {"even": i % 2 == 0, "i": i})

    async with database.transaction() as db:
        first = await users.list_users(db, app.id, page=1, size=3)
        last = await users.list_users(db, app.id, page=3, size=3)
        beyond = await users.list_users(db, app.id, page=9, size=3)
        backwards = await users.list_users(db, app.id, reverse=True, size=3)
        evens = await users.list_users(db, app.id, filter={"even": True})
    assert [u.name for u in first.items] == ["u0", "u1", "u2"]
    assert (first.total, first.page, first.size, first.pages) == (7, 1, 3, 3)
    assert [u.name for u in last.items] == ["u6"]
    assert beyond.items == [] and beyond.total == 7
    assert [u.name for u in backwards.items] == ["u6", "u5", "u4"]
    assert [u.name for u in evens.items] == ["u0", "u2", "u4", "u6"] and evens.total == 4


async def test_fifty_concurrent_get_or_create_make_one_user(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "race")

    async def one_caller() -> str:
        async with database.transaction() as db:
            return (await users.get_or_create_user(db, app.id, "alice")).id

    ids = await asyncio.gather(*(one_caller() for _ in range(50)))
    async with database.transaction() as db:
        rows = (await db.execute(select(User.id).where(User.app_id == app.id, User.name == "alice"))).all()
    assert len(rows) == 1
    assert set(ids) == {rows[0].id}


async def test_fifty_concurrent_get_or_create_make_one_app(database: Database) -> None:
    async def one_caller() -> str:
        async with database.transaction() as db:
            return (await apps.get_or_create_app(db, "shared")).id

    ids = await asyncio.gather(*(one_caller() for _ in range(50)))
    assert len(set(ids)) == 1
    assert await _count(database, App) == 1


async def test_get_or_create_returns_the_existing_row(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "existing", {"keep": 1})
        again = await apps.get_or_create_app(db, "existing")
    assert again.id == app.id and again.metadata_ == {"keep": 1}


@pytest.mark.parametrize(
    ("name", "metadata"),
    [
        ("x" * 101, None),
        ("", None),
        ("nul\x00name", None),
        (42, None),
        ("ok", ["not", "an", "object"]),
        ("ok", "string"),
        ("ok", {"bad": "nul\x00value"}),
        ("ok", {"nan": float("nan")}),
    ],
)
async def test_bad_app_input_is_invalid_and_writes_nothing(
    database: Database, name: object, metadata: object
) -> None:
    with pytest.raises(InvalidError):
        async with database.transaction() as db:
            await apps.create_app(db, name, metadata)  # type: ignore[arg-type]
    assert await _count(database, App) == 0


async def test_taken_names_conflict_and_change_nothing(database: Database) -> None:
    async with database.transaction() as db:
        app = await apps.create_app(db, "taken")
        other = await apps.create_app(db, "other", {"v": 1})
        await users.create_user(db, app.id, "bob")
        carol = await users.create_user(db, app.id, "carol")

    with pytest.raises(ConflictError, match="already exists"):
        async with database.transaction() as db:
            await apps.create_app(db, "taken")
    with pytest.raises(ConflictError):
        async with database.transaction() as db:
            await apps.update_app(db, other.id, name="taken", metadata={"v": 2})
    with pytest.raises(ConflictError):
        async with database.transaction() as db:
            await users.create_user(db, app.id, "bob")
    with pytest.raises(ConflictError):
        async with database.transaction() as db:
            await users.update_user(db, app.id, carol.id, name="bob")

    async with database.transaction() as db:
        assert (await apps.get_app(db, other.id)).metadata_ == {"v": 1}, "a failed update changes nothing"
        assert (await users.get_user(db, app.id, carol.id)).name == "carol"
    assert await _count(database, App) == 2
    assert await _count(database, User) == 2


async def test_same_user_name_in_two_apps_is_fine(database: Database) -> None:
    async with database.transaction() as db:
        a = await apps.create_app(db, "a")
        b = await apps.create_app(db, "b")
        ua = await users.create_user(db, a.id, "same")
        ub = await users.create_user(db, b.id, "same")
    assert ua.id != ub.id


async def test_unknown_and_foreign_ids_are_not_found(database: Database) -> None:
    async with database.transaction() as db:
        a = await apps.create_app(db, "a")
        b = await apps.create_app(db, "b")
        user = await users.create_user(db, a.id, "u")

    for call in (
        lambda db: apps.get_app(db, "nope"),
        lambda db: apps.get_app(db, "bad\x00id"),
        lambda db: apps.get_app_by_name(db, "nope"),
        lambda db: apps.update_app(db, "nope", name="x"),
        lambda db: users.create_user(db, "nope", "u"),
        lambda db: users.get_user(db, b.id, user.id),  # a user of another app
        lambda db: users.update_user(db, b.id, user.id, name="moved"),
        lambda db: users.get_or_create_user(db, "nope", "u"),
        lambda db: users.list_users(db, "nope"),
    ):
        with pytest.raises(NotFoundError):
            async with database.transaction() as db:
                await call(db)
    assert await _count(database, User) == 1


async def test_page_bounds_are_checked(database: Database) -> None:
    async with database.transaction() as db:
        for page, size in ((0, 10), (1, 0), (1, 101)):
            with pytest.raises(InvalidError):
                await apps.list_apps(db, page=page, size=size)
        with pytest.raises(InvalidError):
            await apps.list_apps(db, filter=["not", "an", "object"])  # type: ignore[arg-type]
