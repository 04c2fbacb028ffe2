"""The derivation queue: every stored message queued in the same statement, claimed a session at a time
in message order with a lease, batched by tokens, retried with backoff, parked, and counted."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from storage import derivation, messages, sessions
from storage.db import Database
from storage.derivation import Claim, LeaseLost
from tests.storage.factories import Tree, make_tree

NOW = {"lease_s": 60, "wait_s": 0, "max_tokens": 1000}


async def add(database: Database, tree: Tree, *contents: str, session_id: str | None = None) -> list[str]:
    async with database.transaction() as db:
        rows = await messages.create_messages(
            db,
            tree.app_id,
            tree.user_id,
            session_id or tree.session_id,
            [{"content": c, "is_user": i % 2 == 0, "metadata": {}} for i, c in enumerate(contents)],
        )
    return [r.id for r in rows]


async def claim(database: Database, **options: float) -> Claim | None:
    async with database.transaction() as db:
        return await derivation.claim(db, **{**NOW, **options})  # type: ignore[arg-type]


async def counts(database: Database, **scope: str) -> derivation.Counts:
    async with database.transaction() as db:
        return await derivation.counts(db, **scope)


async def test_storing_messages_queues_them_in_the_same_statement(database: Database) -> None:
    tree = await make_tree(database)
    ids = await add(database, tree, "I moved to Lisbon", "Nice!", "I have a cat")
    assert (await counts(database, app_id=tree.app_id)).pending == 3
    held = await claim(database)
    assert held is not None
    assert held.message_ids == ids, "a session's work comes in message order"
    assert (held.app_id, held.user_id, held.session_id) == (tree.app_id, tree.user_id, tree.session_id)


async def test_a_rolled_back_message_leaves_no_work(database: Database) -> None:
    tree = await make_tree(database)
    try:
        async with database.transaction() as db:
            await messages.create_message(
                db, tree.app_id, tree.user_id, tree.session_id, content="x", is_user=True
            )
            raise RuntimeError("the request failed after the insert")
    except RuntimeError:
        pass
    assert await counts(database) == derivation.Counts()


async def test_sessions_with_deriver_disabled_are_skipped(database: Database) -> None:
    tree = await make_tree(database)
    async with database.transaction() as db:
        off = await sessions.create_session(db, tree.app_id, tree.user_id, {"deriver_disabled": True})
        text_off = await sessions.create_session(db, tree.app_id, tree.user_id, {"deriver_disabled": "yes"})
        on = await sessions.create_session(db, tree.app_id, tree.user_id, {"deriver_disabled": False})
        null = await sessions.create_session(db, tree.app_id, tree.user_id, {"deriver_disabled": None})
    for session in (off, text_off, on, null):
        await add(database, tree, "hello", session_id=session.id)
    queued = {
        s for s in (off.id, text_off.id, on.id, null.id) if (await counts(database, session_id=s)).pending
    }
    assert queued == {on.id, null.id}, "anything but false (or null) disables, as in Honcho v1"


async def test_a_cloned_sessions_copies_are_not_derived_again(database: Database) -> None:
    tree = await make_tree(database)
    await add(database, tree, "one", "two")
    async with database.transaction() as db:
        clone = await sessions.clone_session(db, tree.app_id, tree.user_id, tree.session_id)
    assert (await counts(database, session_id=clone.id)).pending == 0
    await add(database, tree, "three", session_id=clone.id)
    assert (await counts(database, session_id=clone.id)).pending == 1, "new messages in the clone are"


async def test_one_worker_per_session_and_the_lease_expires(database: Database) -> None:
    tree = await make_tree(database)
    await add(database, tree, "a", "b")
    first = await claim(database, lease_s=0.3)
    assert first is not None
    assert await claim(database) is None, "a held session is not offered to a second worker"
    assert (await counts(database)).in_progress == 2
    await asyncio.sleep(0.4)
    second = await claim(database)
    assert second is not None and second.token != first.token, "a dead worker's session comes back"

    async with database.transaction() as db:
        await derivation.complete(db, second, second.message_ids)
    try:
        async with database.transaction() as db:
            await derivation.complete(db, first, first.message_ids)
        raise AssertionError("the expired claim must not record an outcome")
    except LeaseLost:
        pass
    assert (await counts(database)).done == 2


async def test_concurrent_claims_take_different_sessions(database: Database) -> None:
    tree = await make_tree(database)
    others = []
    for _ in range(5):
        async with database.transaction() as db:
            others.append((await sessions.create_session(db, tree.app_id, tree.user_id)).id)
    for session_id in others:
        await add(database, tree, "hi", session_id=session_id)
    claims = await asyncio.gather(*(claim(database) for _ in range(8)))
    taken = [c.session_id for c in claims if c is not None]
    assert sorted(taken) == sorted(others), "each session once, every session"


async def test_a_batch_is_bounded_by_tokens_and_waits_at_most_wait_s(database: Database) -> None:
    tree = await make_tree(database)
    await add(database, tree, *["x" * 400] * 5)  # about 108 tokens each
    assert await claim(database, wait_s=30, max_tokens=10_000) is None, "under the budget, it waits for more"
    held = await claim(database, wait_s=30, max_tokens=250)
    assert held is not None and len(held.items) == 2, (
        "over the budget, it goes at once, in budget-sized batches"
    )
    async with database.transaction() as db:
        await derivation.complete(db, held, held.message_ids)
    await asyncio.sleep(0.3)
    late = await claim(database, wait_s=0.2, max_tokens=10_000)
    assert late is not None and len(late.items) == 3, "after wait_s it goes whatever its size"


async def test_failures_back_off_then_park_with_the_reason_and_raw_output(database: Database) -> None:
    tree = await make_tree(database)
    ids = await add(database, tree, "first", "second")
    held = await claim(database)
    assert held is not None and len(held.items) == 2
    async with database.transaction() as db:
        assert await derivation.fail(db, held, "bad JSON", raw_output="{oops", max_attempts=2) == 0
    assert (await counts(database)).retrying == 2
    assert await claim(database) is None, "backing off"

    async with database.transaction() as db:
        await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))
    retry = await claim(database)
    assert retry is not None and retry.message_ids == ids[:1], "a failed batch is retried head first, alone"
    async with database.transaction() as db:
        assert await derivation.fail(db, retry, "bad JSON again", raw_output="{still", max_attempts=2) == 1
        parked = (
            await db.execute(
                text("SELECT last_error, raw_output FROM derivation_queue WHERE status = 'parked'")
            )
        ).all()
    assert [tuple(p) for p in parked] == [("bad JSON again", "{still")]
    state = await counts(database)
    assert (state.parked, state.retrying) == (1, 1)

    async with database.transaction() as db:
        await db.execute(text("UPDATE derivation_sessions SET not_before = now()"))
    rest = await claim(database)
    assert rest is not None and rest.message_ids == ids[1:], "the session goes on past a parked message"
    async with database.transaction() as db:
        await derivation.complete(db, rest, rest.message_ids)
        assert await derivation.retry_parked(db, app_id=tree.app_id) == 1
    revived = await claim(database)
    assert revived is not None and revived.message_ids == ids[:1]
    assert revived.items[0].attempts == 0, "a revived item gets a fresh set of attempts"


async def test_an_outage_releases_without_spending_attempts(database: Database) -> None:
    tree = await make_tree(database)
    await add(database, tree, "hello")
    held = await claim(database)
    assert held is not None
    async with database.transaction() as db:
        await derivation.release(db, held, delay_s=0.2)
    assert await claim(database) is None
    await asyncio.sleep(0.3)
    again = await claim(database)
    assert again is not None and again.items[0].attempts == 0
    assert (await counts(database)).parked == 0


async def test_counts_are_scoped_and_report_the_oldest_wait(database: Database) -> None:
    tree = await make_tree(database)
    other = await make_tree(database, "other-app")
    await add(database, tree, "a", "b", "c")
    await add(database, other, "z")
    await asyncio.sleep(0.2)
    mine = await counts(database, app_id=tree.app_id)
    assert (mine.pending, mine.done, mine.parked) == (3, 0, 0)
    assert mine.oldest_pending_s >= 0.2
    assert (await counts(database, app_id=other.app_id, user_id=other.user_id)).pending == 1
    assert (await counts(database)).pending == 4
