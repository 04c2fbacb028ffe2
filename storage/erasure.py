"""Erasing a user or an app: every row of theirs in PostgreSQL in one transaction, and their search index
entries through the outbox in that same transaction.

The transaction deletes the user (or app) row, which cascades to sessions, messages, metamessages,
collections, documents and the sessions' derivation leases; it deletes what has no foreign key to them
(derivation work, batch-job rows, index outbox entries naming their rows) and records two index
deletions by scope (``user_id`` or ``app_id``), for messages and for documents. Either all of that
commits or none of it does; once it has, the index deletions are applied at once and, if the process
dies first, by the index sync after a restart: a crash half-way never leaves half an erasure.
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


async def _count(db: AsyncConnection, column: str, value: str) -> tuple[int, int]:
    row = (
        await db.execute(
            text(
                f"SELECT (SELECT count(*) FROM messages WHERE {column} = :v) AS messages, "
                f"(SELECT count(*) FROM documents WHERE {column} = :v) AS documents"
            ),
            {"v": value},
        )
    ).one()
    return int(row.messages), int(row.documents)


async def _erase(db: AsyncConnection, column: str, value: str) -> Erased:
    """Delete what has no foreign key to the owner, then queue the index deletions (the caller deletes
    the owner's row, which cascades to the rest)."""
    n_messages, n_documents = await _count(db, column, value)
    # Outbox entries naming the owner's rows, before the rows (and so the names) are gone.
    await db.execute(
        text(
            f"DELETE FROM index_outbox WHERE target_id IN (SELECT id FROM messages WHERE {column} = :v) "
            f"OR target_id IN (SELECT id FROM documents WHERE {column} = :v)"
        ),
        {"v": value},
    )
    await db.execute(text(f"DELETE FROM derivation_queue WHERE {column} = :v"), {"v": value})
    await db.execute(text(f"DELETE FROM derivation_sessions WHERE {column} = :v"), {"v": value})
    entries = [
        await outbox.enqueue_delete(db, "message", scope={column: value}),
        await outbox.enqueue_delete(db, "document", scope={column: value}),
    ]
    return Erased(n_messages, n_documents, entries)


async def erase_user(db: AsyncConnection, app_id: str, user_id: str) -> Erased:
    """Everything of one user (404 if the app has no such user)."""
    await users.get_user(db, app_id, user_id)
    erased = await _erase(db, "user_id", user_id)
    await db.execute(text("DELETE FROM derivation_job_users WHERE user_id = :u"), {"u": user_id})
    await db.execute(text("DELETE FROM users WHERE id = :u"), {"u": user_id})
    return erased


async def erase_app(db: AsyncConnection, app_id: str) -> Erased:
    """Everything of one app: its users and theirs, and its batch jobs (404 if there is no such app)."""
    await apps.get_app(db, app_id)
    erased = await _erase(db, "app_id", app_id)
    await db.execute(text("DELETE FROM apps WHERE id = :a"), {"a": app_id})  # cascades to its jobs too
    return erased
