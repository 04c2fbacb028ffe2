"""Erasure and the derivation queue: an erasure racing a message insert leaves no work behind for a
session that is gone, a queue item whose session is gone never blocks a claim, and erasing one user
reads only that user's rows (through indexes, whatever the size of everyone else's)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from storage import derivation, erasure, messages, sessions
from storage.db import Database
from tests.storage.factories import Tree, make_tree

NOW = {"lease_s": 60, "wait_s": 0, "max_tokens": 1000}


async def queued(database: Database) -> list[tuple[str, bool]]:
    """Every queue item's session, and whether that session still exists."""
    async with database.transaction() as db:
        rows = await db.execute(
            text(
                "SELECT q.session_id, EXISTS (SELECT 1 FROM sessions s WHERE s.id = q.session_id) "
                "FROM derivation_queue q"
            )
        )
        return [(row[0], row[1]) for row in rows]


async def test_an_erasure_racing_a_message_insert_leaves_no_work_for_a_gone_session(
    database: Database,
) -> None:
    tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        await messages.create_message(
            db, tree.app_id, tree.user_id, tree.session_id, content="hi", is_user=True
        )

    writer = await database.engine.connect()
    writing = await writer.begin()
    # A message stored (and its work queued) by a request that has not committed yet...
    await messages.create_message(
        writer, tree.app_id, tree.user_id, tree.session_id, content="late", is_user=True
    )

    async def erase() -> None:
        async with database.transaction() as db:
            await erasure.erase_user(db, tree.app_id, tree.user_id)

    erasing = asyncio.create_task(erase())
    await asyncio.sleep(0.5)  # ...while the erasure runs as far as it can
    await writing.commit()
    await writer.close()
    await asyncio.wait_for(erasing, timeout=30)

    assert await queued(database) == [], "no queue item outlives its session"


async def test_an_app_erasure_racing_a_new_session_and_its_messages_leaves_no_work(
    database: Database,
) -> None:
    """The same race for a whole app, through a session the erasure could not see when it began."""
    tree = await make_tree(database, user_name="ana")
    writer = await database.engine.connect()
    writing = await writer.begin()
    late = await sessions.create_session(writer, tree.app_id, tree.user_id)
    await messages.create_message(writer, tree.app_id, tree.user_id, late.id, content="late", is_user=True)

    async def erase() -> None:
        async with database.transaction() as db:
            await erasure.erase_app(db, tree.app_id)

    erasing = asyncio.create_task(erase())
    await asyncio.sleep(0.5)
    await writing.commit()
    await writer.close()
    await asyncio.wait_for(erasing, timeout=30)

    assert await queued(database) == [], "no queue item outlives its session"


async def test_a_queue_item_whose_session_is_gone_never_blocks_a_claim(database: Database) -> None:
    """What the race above left behind before it was closed (or a restore that lost a session): the
    item sorts first, and every claim of every worker failed on it until someone deleted it by hand."""
    tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        await messages.create_message(
            db, tree.app_id, tree.user_id, tree.session_id, content="hi", is_user=True
        )
        for n in range(12):  # more orphans than a claim looks at in one go
            await db.execute(
                text(
                    "INSERT INTO derivation_queue (message_id, session_id, app_id, user_id, seq, tokens, created_at) "
                    "VALUES (:m, :s, :a, 'gone-user', 1, 10, now() - interval '1 hour')"
                ),
                {"m": f"orphan-{n}", "s": f"gone-{n}", "a": tree.app_id},
            )
    async with database.autocommit() as db:
        held = await derivation.claim(db, **NOW)
    assert held is not None and held.session_id == tree.session_id
    assert [s for s, exists in await queued(database) if not exists] == [], "the claim dropped them"


async def test_erasing_a_user_reads_only_that_users_rows(database: Database) -> None:
    """Each statement of an erasure, planned with sequential scans priced out: none may read a whole
    table of everyone's messages, documents or queue items to find one user's."""
    tree: Tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        await db.execute(text("SET LOCAL enable_seqscan = off"))
        plans: list[str] = []

        async def explain(statement: str, params: dict[str, str]) -> None:
            rows = await db.execute(text(f"EXPLAIN {statement}"), params)
            plans.append("\n".join(row[0] for row in rows))

        for statement, params in erasure.statements("user_id", tree.app_id, tree.user_id):
            await explain(statement, params)
        for statement, params in erasure.statements("app_id", tree.app_id, None):
            await explain(statement, params)
    # (index_outbox holds only what waits to reach the index, not everything stored: it may be read.)
    big = ("messages", "documents", "derivation_queue", "metamessages", "sessions", "collections")
    for plan in plans:
        for table in big:
            assert f"Seq Scan on {table}" not in plan, plan


async def test_every_foreign_key_has_an_index_for_its_cascade(database: Database) -> None:
    """Deleting a user or an app cascades along foreign keys; a referencing column without an index
    makes each cascaded delete read its whole table. (A partial index on ``col IS NOT NULL`` serves:
    the cascade looks for ``col = x``, which implies it.)"""
    async with database.transaction() as db:
        rows = await db.execute(
            text(
                """
                SELECT c.conrelid::regclass::text, a.attname
                FROM pg_constraint c
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                WHERE c.contype = 'f' AND NOT EXISTS (
                    SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1]
                      AND (i.indpred IS NULL
                           OR pg_get_expr(i.indpred, i.indrelid) = format('(%s IS NOT NULL)', a.attname))
                )
                """
            )
        )
        unindexed = sorted((row[0], row[1]) for row in rows)
    assert unindexed == []
