"""Apps take turns at the derivation queue, and limits.app_derivations caps what one app holds at once."""

from __future__ import annotations

import asyncio

from storage import derivation, messages, sessions
from storage.db import Database
from storage.derivation import Claim
from tests.storage.factories import Tree, make_tree


async def backlog(database: Database, tree: Tree, sessions_count: int) -> list[str]:
    """One due message in each of ``sessions_count`` sessions of the tree's user (the first is the tree's)."""
    ids = [tree.session_id]
    async with database.transaction() as db:
        for _ in range(sessions_count - 1):
            ids.append((await sessions.create_session(db, tree.app_id, tree.user_id)).id)
        for session_id in ids:
            await messages.create_messages(
                db, tree.app_id, tree.user_id, session_id, [{"content": "hello", "is_user": True}]
            )
    return ids


async def claim(database: Database, per_app: int = 0) -> Claim | None:
    async with database.transaction() as db:
        return await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=1000, per_app=per_app)


async def test_the_app_deriving_least_goes_first(database: Database) -> None:
    busy = await make_tree(database, app_name="busy")
    await backlog(database, busy, 3)
    quiet = await make_tree(database, app_name="quiet")
    await backlog(database, quiet, 1)  # queued after all of busy's work

    taken = [await claim(database) for _ in range(4)]
    assert [c.app_id if c else None for c in taken] == [busy.app_id, quiet.app_id, busy.app_id, busy.app_id]


async def test_an_app_at_its_cap_waits_and_others_go_on(database: Database) -> None:
    busy = await make_tree(database, app_name="busy")
    await backlog(database, busy, 3)
    quiet = await make_tree(database, app_name="quiet")
    await backlog(database, quiet, 1)

    first = await claim(database, per_app=1)
    second = await claim(database, per_app=1)
    assert first is not None and second is not None
    assert (first.app_id, second.app_id) == (busy.app_id, quiet.app_id)
    assert await claim(database, per_app=1) is None, "busy has work due but holds its one place"
    assert (await claim(database, per_app=2)) is not None, "a higher cap lets it take another"

    async with database.transaction() as db:
        await derivation.complete(db, first, first.message_ids)
    again = await claim(database, per_app=2)
    assert again is not None and again.app_id == busy.app_id, "a finished batch frees its place"


async def test_concurrent_claims_never_pass_the_cap(database: Database) -> None:
    busy = await make_tree(database, app_name="busy")
    await backlog(database, busy, 6)

    taken = await asyncio.gather(*(claim(database, per_app=2) for _ in range(6)))
    # A claim that finds another counting the app moves on (and finds nothing else here).
    at_once = sum(c is not None for c in taken)
    assert 1 <= at_once <= 2
    later = 0
    while await claim(database, per_app=2) is not None:
        later += 1
    assert at_once + later == 2, "never more than the cap, and the cap is reached"


async def test_an_expired_lease_does_not_count(database: Database) -> None:
    busy = await make_tree(database, app_name="busy")
    await backlog(database, busy, 2)
    async with database.transaction() as db:
        dead = await derivation.claim(db, lease_s=0.001, wait_s=0, max_tokens=1000, per_app=1)
    assert dead is not None
    await asyncio.sleep(0.01)  # its worker died: the lease ran out
    assert await claim(database, per_app=1) is not None


async def test_an_apps_own_cap_overrides_the_default(database: Database) -> None:
    small = await make_tree(database, app_name="small")
    await backlog(database, small, 3)
    big = await make_tree(database, app_name="big")
    await backlog(database, big, 3)

    async def take(**limits: object) -> str | None:
        async with database.transaction() as db:
            held = await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=1000, **limits)  # type: ignore[arg-type]
        return held.app_id if held else None

    caps = {small.app_id: 1}  # no default cap; the small app's own is 1
    assert [await take(caps=caps) for _ in range(4)] == [small.app_id, big.app_id, big.app_id, big.app_id]
    assert await take(caps=caps) is None, "small is at its cap, big has nothing left"
    assert await take(per_app=1) is None
    assert await take(per_app=1, caps={small.app_id: 0}) == small.app_id, "its own 0 lifts the default cap"
