"""Sessions (soft delete, clone) and messages (ordered batches, filters) against real Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from storage import messages, metamessages, sessions
from storage.db import Database
from storage.errors import InvalidError, NotFoundError
from storage.tables import Message, Session
from tests.storage.factories import make_tree


async def _count(database: Database, model: type) -> int:
    async with database.transaction() as db:
        return (await db.execute(select(func.count()).select_from(model))).scalar_one()


async def test_session_soft_delete_and_active_filter(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        second = await sessions.create_session(db, t.app_id, t.user_id, {"topic": "b"})
        deleted = await sessions.delete_session(db, t.app_id, t.user_id, t.session_id)
    assert deleted.is_active is False

    async with database.transaction() as db:
        still_there = await sessions.get_session(db, t.app_id, t.user_id, t.session_id)
        everything = await sessions.list_sessions(db, t.app_id, t.user_id)
        active = await sessions.list_sessions(db, t.app_id, t.user_id, is_active=True)
        by_topic = await sessions.list_sessions(db, t.app_id, t.user_id, filter={"topic": "b"})
    assert still_there.is_active is False
    assert [s.id for s in everything.items] == [t.session_id, second.id]
    assert [s.id for s in active.items] == [second.id]
    assert [s.id for s in by_topic.items] == [second.id]


async def test_session_ids_must_belong_to_the_path(database: Database) -> None:
    t = await make_tree(database)
    other = await make_tree(database, "app2", "user2")
    for call in (
        lambda db: sessions.create_session(db, other.app_id, t.user_id),
        lambda db: sessions.get_session(db, t.app_id, other.user_id, t.session_id),
        lambda db: sessions.update_session(db, other.app_id, t.user_id, t.session_id, {}),
        lambda db: sessions.delete_session(db, t.app_id, t.user_id, other.session_id),
        lambda db: messages.create_message(
            db, t.app_id, t.user_id, other.session_id, content="x", is_user=True
        ),
        lambda db: messages.create_messages(
            db, t.app_id, t.user_id, other.session_id, [{"content": "x", "is_user": True}]
        ),
        lambda db: messages.list_messages(db, t.app_id, t.user_id, other.session_id),
    ):
        with pytest.raises(NotFoundError):
            async with database.transaction() as db:
                await call(db)
    assert await _count(database, Session) == 2
    assert await _count(database, Message) == 0


async def test_batch_keeps_order_and_lists_reverse(database: Database) -> None:
    t = await make_tree(database)
    batch = [{"content": f"m{i}", "is_user": i % 2 == 0, "metadata": {"i": i}} for i in range(100)]
    async with database.transaction() as db:
        created = await messages.create_messages(db, t.app_id, t.user_id, t.session_id, batch)
        single = await messages.create_message(
            db, t.app_id, t.user_id, t.session_id, content="last", is_user=False
        )
    assert [m.content for m in created] == [f"m{i}" for i in range(100)]
    assert {m.created_at for m in created} == {created[0].created_at}, "one transaction, one timestamp"

    async with database.transaction() as db:
        page = await messages.list_messages(db, t.app_id, t.user_id, t.session_id, size=100)
        newest = await messages.list_messages(db, t.app_id, t.user_id, t.session_id, reverse=True, size=2)
        only_7 = await messages.list_messages(db, t.app_id, t.user_id, t.session_id, filter={"i": 7})
    assert [m.content for m in page.items] == [f"m{i}" for i in range(100)]
    assert page.total == 101 and page.pages == 2
    assert [m.id for m in newest.items] == [single.id, created[-1].id]
    assert [m.content for m in only_7.items] == ["m7"]


@pytest.mark.parametrize(
    "batch",
    [
        [],
        [{"content": "x", "is_user": True}] * 101,
        [{"content": "ok", "is_user": True}, {"content": "x" * 50_001, "is_user": True}],
        [{"content": "ok", "is_user": True}, {"content": "ok", "is_user": "yes"}],
        [{"content": "ok", "is_user": True}, {"content": "ok", "is_user": True, "metadata": [1]}],
    ],
)
async def test_bad_batches_store_nothing(database: Database, batch: list) -> None:
    t = await make_tree(database)
    with pytest.raises(InvalidError):
        async with database.transaction() as db:
            await messages.create_messages(db, t.app_id, t.user_id, t.session_id, batch)
    assert await _count(database, Message) == 0


async def test_messages_can_be_added_to_an_inactive_session(database: Database) -> None:
    """As in Honcho v1.1.0: deletion is soft and the session still accepts messages."""
    t = await make_tree(database)
    async with database.transaction() as db:
        await sessions.delete_session(db, t.app_id, t.user_id, t.session_id)
        await messages.create_message(db, t.app_id, t.user_id, t.session_id, content="hi", is_user=True)
    assert await _count(database, Message) == 1


async def test_update_message_metadata(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        m = await messages.create_message(db, t.app_id, t.user_id, t.session_id, content="x", is_user=True)
        updated = await messages.update_message(db, t.app_id, t.user_id, t.session_id, m.id, {"seen": True})
        fetched = await messages.get_message(db, t.app_id, t.user_id, t.session_id, m.id)
    assert updated.metadata_ == fetched.metadata_ == {"seen": True}
    assert fetched.content == "x"


async def test_clone_up_to_a_message_with_deep_copy(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        await sessions.update_session(db, t.app_id, t.user_id, t.session_id, {"topic": "travel"})
        ms = await messages.create_messages(
            db, t.app_id, t.user_id, t.session_id, [{"content": f"m{i}", "is_user": True} for i in range(5)]
        )
        await metamessages.create_metamessage(
            db,
            t.app_id,
            t.user_id,
            label="note",
            content="on m1",
            session_id=t.session_id,
            message_id=ms[1].id,
        )
        await metamessages.create_metamessage(
            db,
            t.app_id,
            t.user_id,
            label="note",
            content="on m4",
            session_id=t.session_id,
            message_id=ms[4].id,
        )
        await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="note", content="on session", session_id=t.session_id
        )
        await metamessages.create_metamessage(db, t.app_id, t.user_id, label="note", content="on user")

    async with database.transaction() as db:
        clone = await sessions.clone_session(
            db, t.app_id, t.user_id, t.session_id, message_id=ms[2].id, deep_copy=True
        )
    assert clone.id != t.session_id and clone.is_active and clone.metadata_ == {"topic": "travel"}

    async with database.transaction() as db:
        copied = (await messages.list_messages(db, t.app_id, t.user_id, clone.id)).items
        metas = (await metamessages.list_metamessages(db, t.app_id, t.user_id, session_id=clone.id)).items
    assert [m.content for m in copied] == ["m0", "m1", "m2"], "the cut-off message is included"
    assert {m.id for m in copied}.isdisjoint({m.id for m in ms})
    assert sorted(m.content for m in metas) == ["on m1", "on session"]
    on_m1 = next(m for m in metas if m.content == "on m1")
    assert on_m1.message_id == copied[1].id, "links point at the copied message"


async def test_clone_without_deep_copy_and_bad_cutoff(database: Database) -> None:
    t = await make_tree(database)
    other = await make_tree(database, "a2", "u2")
    async with database.transaction() as db:
        await messages.create_message(db, t.app_id, t.user_id, t.session_id, content="a", is_user=True)
        await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="l", content="c", session_id=t.session_id
        )
        foreign = await messages.create_message(
            db, other.app_id, other.user_id, other.session_id, content="b", is_user=True
        )
        clone = await sessions.clone_session(db, t.app_id, t.user_id, t.session_id)
        metas = await metamessages.list_metamessages(db, t.app_id, t.user_id, session_id=clone.id)
    assert metas.total == 0
    with pytest.raises(NotFoundError):
        async with database.transaction() as db:
            await sessions.clone_session(db, t.app_id, t.user_id, t.session_id, message_id=foreign.id)
    assert await _count(database, Session) == 3
