"""Clone copies inside PostgreSQL, up to storage.sessions.CLONE_MAX rows of each kind (issue #27)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage import messages, metamessages, sessions
from storage.db import Database
from storage.errors import InvalidError
from storage.sessions import CLONE_MAX
from tests.storage.factories import make_tree


async def test_a_deep_copy_of_a_session_without_messages_keeps_its_own_metamessages(
    database: Database,
) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        await metamessages.create_metamessage(
            db, t.app_id, t.user_id, label="plan", content="on the session", session_id=t.session_id
        )
        clone = await sessions.clone_session(db, t.app_id, t.user_id, t.session_id, deep_copy=True)
        copied = await metamessages.list_metamessages(db, t.app_id, t.user_id, session_id=clone.id)
        outbox = (await db.execute(text("SELECT count(*) FROM index_outbox"))).scalar_one()
    assert [(m.content, m.message_id) for m in copied.items] == [("on the session", None)]
    assert outbox == 0


async def test_metamessages_past_the_cap_refuse_a_deep_copy_but_not_a_plain_one(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        first = await messages.create_message(
            db, t.app_id, t.user_id, t.session_id, content="hi", is_user=True
        )
        await db.execute(
            text(
                "INSERT INTO metamessages (id, app_id, user_id, session_id, message_id, label, content) "
                "SELECT 'mm' || n, :app, :user, :session, :message, 'note', 'n' || n "
                "FROM generate_series(1, :n) AS n"
            ),
            {
                "app": t.app_id,
                "user": t.user_id,
                "session": t.session_id,
                "message": first.id,
                "n": CLONE_MAX + 1,
            },
        )
    with pytest.raises(InvalidError, match="deep_copy") as refused:
        async with database.transaction() as db:
            await sessions.clone_session(db, t.app_id, t.user_id, t.session_id, deep_copy=True)
    assert refused.value.field == ("deep_copy",)

    async with database.transaction() as db:
        clone = await sessions.clone_session(db, t.app_id, t.user_id, t.session_id)
        copied = await messages.list_messages(db, t.app_id, t.user_id, clone.id)
        metas = await metamessages.list_metamessages(db, t.app_id, t.user_id, session_id=clone.id)
    assert [m.content for m in copied.items] == ["hi"] and metas.total == 0
