"""Metamessages: links to the user's own sessions and messages only; filters; partial updates."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from storage import messages, metamessages, sessions
from storage.db import Database
from storage.errors import InvalidError, NotFoundError
from storage.tables import Metamessage
from tests.storage.factories import make_tree


async def test_create_list_filters(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        m = await messages.create_message(db, t.app_id, t.user_id, t.session_id, content="x", is_user=True)
        user_level = await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="profile", content="p"
        )
        on_session = await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="summary", content="s", session_id=t.session_id, metadata={"k": 1}
        )
        on_message = await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="thought", content="t", session_id=t.session_id, message_id=m.id
        )

    async with database.transaction() as db:
        all_ = await metamessages.list_metamessages(db, t.app_id, t.user_id)
        by_session = await metamessages.list_metamessages(db, t.app_id, t.user_id, session_id=t.session_id)
        by_message = await metamessages.list_metamessages(db, t.app_id, t.user_id, message_id=m.id)
        by_label = await metamessages.list_metamessages(db, t.app_id, t.user_id, label="summary")
        by_meta = await metamessages.list_metamessages(db, t.app_id, t.user_id, filter={"k": 1})
        newest = await metamessages.list_metamessages(db, t.app_id, t.user_id, reverse=True, size=1)
    assert [x.id for x in all_.items] == [user_level.id, on_session.id, on_message.id]
    assert [x.id for x in by_session.items] == [on_session.id, on_message.id]
    assert [x.id for x in by_message.items] == [on_message.id]
    assert [x.id for x in by_label.items] == [on_session.id]
    assert [x.id for x in by_meta.items] == [on_session.id]
    assert [x.id for x in newest.items] == [on_message.id]


async def test_links_outside_the_user_are_refused(database: Database) -> None:
    t = await make_tree(database)
    other = await make_tree(database, "a2", "u2")
    async with database.transaction() as db:
        own_session_2 = await sessions.create_session(db, t.app_id, t.user_id)
        foreign_message = await messages.create_message(
            db, other.app_id, other.user_id, other.session_id, content="x", is_user=True
        )
        msg_in_2 = await messages.create_message(
            db, t.app_id, t.user_id, own_session_2.id, content="y", is_user=True
        )

    cases = [
        (NotFoundError, dict(session_id=other.session_id)),
        (NotFoundError, dict(session_id=other.session_id, message_id=foreign_message.id)),
        (NotFoundError, dict(session_id=t.session_id, message_id=msg_in_2.id)),  # message of another session
        (InvalidError, dict(message_id=msg_in_2.id)),  # a message needs its session
        (InvalidError, dict(label="x" * 51)),
        (InvalidError, dict(label="")),
        (InvalidError, dict(metadata="nope")),
    ]
    for error, kwargs in cases:
        fields = {"label": "l", "content": "c", **kwargs}
        with pytest.raises(error):
            async with database.transaction() as db:
                await metamessages.create_metamessage(db, t.app_id, t.user_id, **fields)
    with pytest.raises(NotFoundError):
        async with database.transaction() as db:
            await metamessages.create_metamessage(db, other.app_id, t.user_id, label="l", content="c")
    async with database.transaction() as db:
        assert (await db.execute(select(func.count()).select_from(Metamessage))).scalar_one() == 0


async def test_update_moves_links_and_keeps_other_fields(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        m = await messages.create_message(db, t.app_id, t.user_id, t.session_id, content="x", is_user=True)
        s2 = await sessions.create_session(db, t.app_id, t.user_id)
        mm = await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="l", content="c", metadata={"a": 1}, session_id=t.session_id
        )
        # Check each step as it happens.
        linked = await metamessages.update_metamessage(db, t.app_id, t.user_id, mm.id, message_id=m.id)
        assert (linked.session_id, linked.message_id) == (t.session_id, m.id)
        relabelled = await metamessages.update_metamessage(db, t.app_id, t.user_id, mm.id, label="l2")
        assert (relabelled.label, relabelled.message_id, relabelled.metadata_) == ("l2", m.id, {"a": 1})
        moved = await metamessages.update_metamessage(db, t.app_id, t.user_id, mm.id, session_id=s2.id)
        assert (moved.session_id, moved.message_id) == (s2.id, None), "a link into the old session is dropped"

    with pytest.raises(NotFoundError):
        async with database.transaction() as db:
            await metamessages.update_metamessage(db, t.app_id, t.user_id, mm.id, message_id=m.id)
    async with database.transaction() as db:
        fetched = await metamessages.get_metamessage(db, t.app_id, t.user_id, mm.id)
    assert (fetched.session_id, fetched.message_id, fetched.label) == (s2.id, None, "l2")
