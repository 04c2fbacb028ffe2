"""Erasing one user of a large deployment: how long the erasure's transaction takes when everyone else has
stored a million messages and hundreds of thousands of facts.

    python -m bench.erasure_scale [--messages 1000000] [--users 10000] [--facts 200000] [--erase 5]
                                  [--database-url URL]

It fills a scratch database (on the server TEST_DATABASE_URL or --database-url names; an embedded one
otherwise) in bulk: one app, ``--users`` users with a session and a facts collection each, the messages
and facts spread over them, derived and indexed as a deployment in steady state holds them (1% of the
messages still waiting for the deriver). Then it erases ``--erase`` users one at a time, as the API does
(`storage.erasure.erase_user` in one transaction), and prints each time. For comparison it times, in a
transaction it rolls back, the statements the erasure ran before 2026-12-07, which looked for the user's
rows by columns no index leads with (here on today's tables: the derivation queue no longer keeps the
items it finished, which those statements also read, one row per message ever stored).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rapport.settings import DBSettings  # noqa: E402
from storage import erasure, migrate  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.db import scratch_database  # noqa: E402

# The statements an erasure of user :u ran before 2026-12-07 (besides deleting the user's row).
BEFORE = (
    "SELECT (SELECT count(*) FROM messages WHERE user_id = :u), (SELECT count(*) FROM documents WHERE user_id = :u)",
    "DELETE FROM index_outbox WHERE target_id IN (SELECT id FROM messages WHERE user_id = :u) "
    "OR target_id IN (SELECT id FROM documents WHERE user_id = :u)",
    "DELETE FROM derivation_queue WHERE user_id = :u",
    "DELETE FROM derivation_sessions WHERE user_id = :u",
    "DELETE FROM derivation_job_users WHERE user_id = :u",
)


class Undo(Exception):
    """Raised to roll a transaction back."""


async def populate(database: Database, messages: int, users: int, facts: int) -> None:
    statements = [
        "INSERT INTO apps (id, name) VALUES ('app', 'scale')",
        "INSERT INTO users (id, app_id, name) SELECT 'u' || g, 'app', 'user ' || g FROM generate_series(1, :users) g",
        "INSERT INTO sessions (id, name, app_id, user_id) "
        "SELECT 's' || g, 's' || g, 'app', 'u' || g FROM generate_series(1, :users) g",
        "INSERT INTO collections (id, app_id, user_id, name) "
        "SELECT 'c' || g, 'app', 'u' || g, 'honcho' FROM generate_series(1, :users) g",
        # The triggers queue each message for the deriver and the index, as a request's insert does.
        "INSERT INTO messages (id, app_id, user_id, session_id, peer_id, is_user, content) "
        "SELECT 'm' || g, 'app', 'u' || (g % :users + 1), 's' || (g % :users + 1), 'u' || (g % :users + 1), true, "
        "'message ' || g || ' about the garden, the trip and the week' FROM generate_series(1, :messages) g",
        "INSERT INTO documents (id, app_id, user_id, collection_id, content, metadata) "
        "SELECT 'd' || g, 'app', 'u' || (g % :users + 1), 'c' || (g % :users + 1), 'the user likes thing ' || g, "
        "jsonb_build_object('message_ids', jsonb_build_array('m' || g)) FROM generate_series(1, :facts) g",
        # Steady state: the index has everything, the deriver all but the newest 1%.
        "DELETE FROM index_outbox",
        "INSERT INTO derivation_sessions (session_id, app_id, user_id, done) "
        "SELECT session_id, 'app', min(user_id), count(*) FROM derivation_queue GROUP BY session_id",
        "DELETE FROM derivation_queue WHERE (substring(message_id from 2))::bigint <= :messages * 0.99",
    ]
    params = {"users": users, "messages": messages, "facts": facts}
    for statement in statements:
        started = time.monotonic()
        async with database.transaction() as db:
            await db.execute(text(statement), params)
        print(f"  {time.monotonic() - started:6.1f}s  {statement[:90]}", flush=True)
    async with database.autocommit() as db:
        await db.execute(text("VACUUM ANALYZE"))


async def run(url: str, args: argparse.Namespace) -> None:
    migrate.upgrade(url)
    database = Database(url, DBSettings(pool_size=2, statement_timeout_ms=0))
    try:
        print(
            f"populating: {args.messages:,} messages, {args.users:,} users, {args.facts:,} facts", flush=True
        )
        await populate(database, args.messages, args.users, args.facts)
        step = max(1, args.users // args.erase)
        before, now = [], []
        for n in range(1, args.users + 1, step)[: args.erase]:
            user = f"u{n}"
            started = time.monotonic()
            try:
                async with database.transaction() as db:
                    for statement in BEFORE:
                        await db.execute(text(statement), {"u": user})
                    raise Undo  # rolls the transaction back
            except Undo:
                before.append(time.monotonic() - started)
            started = time.monotonic()
            async with database.transaction() as db:
                erased = await erasure.erase_user(db, "app", user)
            now.append(time.monotonic() - started)
            print(
                f"  user {user}: {erased.messages} messages, {erased.documents} facts: erased in "
                f"{now[-1] * 1000:.0f} ms (the statements of before, on today's tables: {before[-1] * 1000:.0f} ms)",
                flush=True,
            )
        print(
            f"erasing one user of {args.messages:,} messages: median {statistics.median(now) * 1000:.0f} ms, "
            f"max {max(now) * 1000:.0f} ms; before: median {statistics.median(before) * 1000:.0f} ms"
        )
    finally:
        await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--facts", type=int, default=200_000)
    parser.add_argument("--erase", type=int, default=5)
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL server to make the scratch database on"
    )
    args = parser.parse_args()
    if args.database_url:
        os.environ["TEST_DATABASE_URL"] = args.database_url
    print(f"# bench/erasure_scale.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}")
    with scratch_database("rapport_erasure") as url:
        asyncio.run(run(url, args))


if __name__ == "__main__":
    main()
