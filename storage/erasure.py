"""Erasing a user or an app: every row of theirs in PostgreSQL in one transaction, and their search index
entries through the outbox in that same transaction.

The transaction locks the owner's rows first (see ``_STATEMENTS``), then deletes the user (or app) row,
which cascades to sessions, messages (those of its sessions, and those it sent as a peer in others'),
session memberships, metamessages, collections, documents and the sessions' derivation leases; it deletes what has no foreign key to them (derivation work, batch-job rows) and records two
index deletions by scope (``user_id`` or ``app_id``), for messages and for documents (and, by id, a user's
messages in others' sessions and what it concluded about other peers). Either all of that
commits or none of it does; once it has, the index deletions are applied at once and, if the process
dies first, by the index sync after a restart: a crash half-way never leaves half an erasure. Once
applied, the deletions leave the index's files too, not only its results: the index sync purges the
tables (pipelines/indexing.py ``IndexSync.purge``) within ``vector_store.erasure_purge_s`` plus a grace.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import apps, outbox, users


@dataclass(frozen=True, slots=True)
class Erased:
    messages: int
    documents: int
    index_entries: list[int]  # the outbox entries that take them out of the index


# What an erasure reads and deletes besides the owner's row, in order, for a user or an app. The owner's
# rows are locked first: an app's row (no new user), the users' facts collections (of them, and those
# they hold about others as observers), the users' rows (no new session or collection), then their
# sessions. A message insert takes a share lock on its session row, so
# the erasure waits for one under way to commit, and one that starts later waits for the erasure and then
# finds its session gone: every message whose work is queued is visible here, and none can be queued
# after. Collections come before users because the deriver stores a batch holding its user's collection
# and then takes share locks on the user's and session's rows (its summary's foreign keys): the same
# order, so the two wait for each other instead of deadlocking. Each statement finds the owner's rows
# through an index (messages by user, documents by collection, queue items by app and user), whatever
# everyone else has stored.
_USER_ROWS = "SELECT id FROM users WHERE app_id = :a AND id = :u"
_APP_USERS = "SELECT id FROM users WHERE app_id = :a"
_STATEMENTS = (
    # locks
    ("lock", "SELECT id FROM apps WHERE id = :a {app_lock}"),
    (
        "lock",
        "SELECT c.id FROM collections c WHERE c.user_id IN ({users}) OR c.observer_id IN ({users}) "
        "ORDER BY c.id FOR UPDATE OF c",
    ),
    ("lock", "SELECT u.id FROM users u WHERE u.id IN ({users}) ORDER BY u.id FOR UPDATE OF u"),
    ("lock", "SELECT s.id FROM sessions s WHERE s.user_id IN ({users}) ORDER BY s.id FOR UPDATE OF s"),
    # counts, for the answer
    (
        "count",
        "SELECT (SELECT count(*) FROM messages WHERE user_id IN ({users})) + (SELECT count(*) FROM messages "
        "WHERE peer_id IN ({users}) AND user_id NOT IN ({users}))",
    ),
    (
        "count",
        "SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
        "WHERE c.user_id IN ({users}) OR c.observer_id IN ({users})",
    ),
    # what has no foreign key to the owner. (Index outbox entries naming the owner's rows stay: one may
    # belong to a round of the index sync under way, which wrote the rows after this erasure's index
    # delete; applied again, an entry whose row is gone takes it out of the index.)
    ("delete", "DELETE FROM derivation_queue WHERE app_id = :a AND {queue_user}"),
    (
        "delete",
        "DELETE FROM derivation_job_users WHERE job_id IN (SELECT id FROM derivation_jobs WHERE app_id = :a) "
        "AND user_id IN ({users})",
    ),
)


def statements(column: str, app_id: str, user_id: str | None) -> list[tuple[str, dict[str, str]]]:
    """The erasure's statements for a user (``column`` "user_id") or an app ("app_id"), with their
    parameters, in the order they run (the owner's row is deleted after them)."""
    if column == "user_id":
        users, app_lock, queue_user = _USER_ROWS, "", "user_id = :u"
        params = {"a": app_id, "u": str(user_id)}
    else:
        users, app_lock, queue_user = _APP_USERS, "FOR UPDATE", "true"
        params = {"a": app_id}
    return [
        (sql.format(users=users, app_lock=app_lock, queue_user=queue_user), params) for _, sql in _STATEMENTS
    ]


async def _erase(db: AsyncConnection, column: str, app_id: str, user_id: str | None = None) -> Erased:
    """Lock the owner's rows, count them, delete what has no foreign key to the owner, and queue the
    index deletions (the caller deletes the owner's row, which cascades to the rest)."""
    counts = []
    for (kind, _), (sql, params) in zip(_STATEMENTS, statements(column, app_id, user_id), strict=True):
        result = await db.execute(text(sql), params)
        if kind == "count":
            counts.append(int(result.scalar_one()))
    scope = {column: str(user_id) if column == "user_id" else app_id}
    entries = [
        await outbox.enqueue_delete(db, "message", scope=scope),
        await outbox.enqueue_delete(db, "document", scope=scope),
    ]
    if column == "user_id":
        # What the peer said in sessions of others (a v1 session's assistant, a member of someone's
        # session): the user row's cascade deletes those messages; they leave the index by id.
        sent = await db.execute(
            text("SELECT id FROM messages WHERE peer_id = :u AND user_id <> :u"), {"u": str(user_id)}
        )
        entries += await outbox.enqueue_deletes(db, "message", [row.id for row in sent])
        # What the peer concluded about others (collections of theirs it observes): the cascade deletes
        # those collections; their documents leave the index by id.
        held = await db.execute(
            text(
                "SELECT d.id FROM documents d JOIN collections c ON c.id = d.collection_id "
                "WHERE c.observer_id = :u AND c.user_id <> :u"
            ),
            {"u": str(user_id)},
        )
        entries += await outbox.enqueue_deletes(db, "document", [row.id for row in held])
    return Erased(counts[0], counts[1], entries)


async def erase_user(db: AsyncConnection, app_id: str, user_id: str) -> Erased:
    """Everything of one user (404 if the app has no such user)."""
    await users.get_user(db, app_id, user_id)
    erased = await _erase(db, "user_id", app_id, user_id)
    await db.execute(text("DELETE FROM users WHERE id = :u"), {"u": user_id})
    return erased


async def erase_app(db: AsyncConnection, app_id: str) -> Erased:
    """Everything of one app: its users and theirs, and its batch jobs (404 if there is no such app)."""
    await apps.get_app(db, app_id)
    erased = await _erase(db, "app_id", app_id)
    await db.execute(text("DELETE FROM apps WHERE id = :a"), {"a": app_id})  # cascades to its jobs too
    return erased
