"""The per-app token bucket in Postgres (storage/ratelimits.py)."""

from __future__ import annotations

import asyncio

import pytest

from storage import ratelimits
from storage.db import Database
from tests.storage.factories import make_tree

SLOW = {"rate": 0.001, "burst": 5}  # a token every 1,000 s: nothing refills during the test


async def take(database: Database, app_id: str, want: int, returned: int = 0) -> ratelimits.Grant | None:
    async with database.transaction() as db:
        return await ratelimits.take(db, app_id, want=want, returned=returned, **SLOW)  # type: ignore[arg-type]


async def test_a_bucket_starts_full_gives_what_it_has_and_takes_back_what_was_not_spent(
    database: Database,
) -> None:
    app = (await make_tree(database)).app_id
    first = await take(database, app, want=3)
    assert first is not None and first.granted == 3 and first.left == pytest.approx(2, abs=0.01)
    second = await take(database, app, want=3)
    assert second is not None and second.granted == 2, "what is left, not more"
    empty = await take(database, app, want=1)
    assert empty is not None and empty.granted == 0 and empty.left < 1
    given_back = await take(database, app, want=1, returned=2)  # a replica's unspent tokens come back
    assert (
        given_back is not None and given_back.granted == 1 and given_back.left == pytest.approx(1, abs=0.01)
    )
    capped = await take(database, app, want=0, returned=50)
    assert capped is not None and capped.left == pytest.approx(5, abs=0.01), "never above the burst"


async def test_concurrent_takes_never_give_more_than_the_bucket_holds(database: Database) -> None:
    app = (await make_tree(database)).app_id
    grants = await asyncio.gather(*(take(database, app, want=2) for _ in range(8)))
    assert sum(g.granted for g in grants if g is not None) == 5
    assert all(g is not None and g.granted >= 0 for g in grants)


async def test_no_bucket_for_an_app_that_does_not_exist(database: Database) -> None:
    assert await take(database, "no-such-app", want=1) is None
