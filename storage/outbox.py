"""The index outbox: LanceDB work recorded in the same transaction as the PostgreSQL change it follows.

Entries are applied by the index sync (pipelines/indexing.py) and removed once applied. A failing entry
is retried with backoff; after ``max_attempts`` it is parked (kept, reported in /health) rather than
dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, delete, func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Interval, Text

from storage.tables import IndexOutbox

Kind = Literal["document", "message"]

# Documents are written to the index by the request that created them; the outbox entry only matters if
# that write never happens, so it becomes due after this delay.
INLINE_GRACE_S = 30


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    kind: Kind
    action: Literal["upsert", "delete"]
    target_id: str | None
    scope: dict[str, Any] | None
    attempts: int


async def enqueue_upserts(
    db: AsyncConnection, kind: Kind, ids: Sequence[str], *, delay_s: float = 0
) -> list[int]:
    """Record that these rows must be (re)written to the index; returns the entry ids."""
    if not ids:
        return []
    source = select(
        literal(kind),
        literal("upsert"),
        func.unnest(bindparam("ids", type_=ARRAY(Text))),
        func.now() + bindparam("delay", type_=Interval),
    )
    stmt = (
        insert(IndexOutbox)
        .from_select(["kind", "action", "target_id", "available_at"], source)
        .returning(IndexOutbox.id)
    )
    result = await db.execute(stmt, {"ids": list(ids), "delay": timedelta(seconds=delay_s)})
    return [row[0] for row in result]


async def enqueue_delete(
    db: AsyncConnection, kind: Kind, *, target_id: str | None = None, scope: dict[str, str] | None = None
) -> int:
    """Record that a row (``target_id``) or every row matching ``scope`` must leave the index."""
    stmt = (
        insert(IndexOutbox)
        .values(kind=kind, action="delete", target_id=target_id, scope=scope)
        .returning(IndexOutbox.id)
    )
    return (await db.execute(stmt)).scalar_one()


async def enqueue_deletes(db: AsyncConnection, kind: Kind, ids: Sequence[str]) -> list[int]:
    """Record that these rows must leave the index; returns the entry ids."""
    if not ids:
        return []
    source = select(literal(kind), literal("delete"), func.unnest(bindparam("ids", type_=ARRAY(Text))))
    stmt = insert(IndexOutbox).from_select(["kind", "action", "target_id"], source).returning(IndexOutbox.id)
    return [row[0] for row in await db.execute(stmt, {"ids": list(ids)})]


async def due(db: AsyncConnection, limit: int, *, ids: Sequence[int] | None = None) -> list[Entry]:
    """Entries ready to apply, oldest first (or exactly ``ids``, due or not), locked for this transaction;
    entries another worker holds are skipped."""
    stmt = select(
        IndexOutbox.id,
        IndexOutbox.kind,
        IndexOutbox.action,
        IndexOutbox.target_id,
        IndexOutbox.scope,
        IndexOutbox.attempts,
    ).where(IndexOutbox.parked.is_(False))
    if ids is not None:
        stmt = stmt.where(IndexOutbox.id.in_(list(ids)))
    else:
        stmt = stmt.where(IndexOutbox.available_at <= func.now())
    stmt = stmt.order_by(IndexOutbox.id).limit(limit).with_for_update(skip_locked=True)
    return [Entry(*row) for row in await db.execute(stmt)]


async def claim(db: AsyncConnection, limit: int, *, lease_s: float) -> list[Entry]:
    """Take up to ``limit`` due entries for this worker: they stay out of other rounds for ``lease_s``
    (or until done, failed or released), so the work can run outside any transaction."""
    entries = await due(db, limit)
    if entries:
        await release(db, [e.id for e in entries], delay_s=lease_s)
    return entries


async def release(db: AsyncConnection, ids: Sequence[int], *, delay_s: float) -> None:
    """Make entries due again after ``delay_s``, without counting an attempt."""
    if ids:
        await db.execute(
            update(IndexOutbox)
            .where(IndexOutbox.id.in_(list(ids)))
            .values(available_at=func.now() + timedelta(seconds=delay_s))
        )


async def unpark(db: AsyncConnection) -> int:
    """Give every parked entry a fresh set of attempts, due now; returns how many."""
    result = await db.execute(
        update(IndexOutbox)
        .where(IndexOutbox.parked.is_(True))
        .values(parked=False, attempts=0, available_at=func.now())
    )
    return result.rowcount


async def done(db: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await db.execute(delete(IndexOutbox).where(IndexOutbox.id.in_(list(ids))))


async def failed(db: AsyncConnection, ids: Sequence[int], error: str, *, max_attempts: int) -> None:
    """Count a failed attempt: retry later with exponential backoff, or park after ``max_attempts``."""
    if not ids:
        return
    attempts = IndexOutbox.attempts + 1
    await db.execute(
        update(IndexOutbox)
        .where(IndexOutbox.id.in_(list(ids)))
        .values(
            attempts=attempts,
            last_error=error[:2000],
            parked=attempts >= max_attempts,
            available_at=func.now()
            + func.make_interval(0, 0, 0, 0, 0, 0, func.least(func.power(2, attempts), 600)),
        )
    )


@dataclass(frozen=True, slots=True)
class Lag:
    pending: int
    parked: int
    oldest_s: float


async def lag(db: AsyncConnection) -> Lag:
    """How far the index is behind PostgreSQL: entries waiting, entries parked, age of the oldest."""
    row = (
        await db.execute(
            text(
                "SELECT count(*) FILTER (WHERE NOT parked), count(*) FILTER (WHERE parked), "
                "coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE NOT parked)), 0) "
                "FROM index_outbox"
            )
        )
    ).one()
    return Lag(pending=int(row[0]), parked=int(row[1]), oldest_s=float(row[2]))


async def clear(db: AsyncConnection) -> int:
    """Drop every entry, parked ones included: a full rebuild supersedes them all."""
    return (await db.execute(delete(IndexOutbox))).rowcount


async def parked_reasons(db: AsyncConnection, *, limit: int = 10) -> list[tuple[str, int]]:
    """Why entries were parked: each error with how many it parked, the commonest first."""
    rows = await db.execute(
        select(IndexOutbox.last_error, func.count())
        .where(IndexOutbox.parked)
        .group_by(IndexOutbox.last_error)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return [(str(error), int(count)) for error, count in rows]


async def waiting(db: AsyncConnection, ids: Sequence[int]) -> int:
    """How many of these entries are not applied yet (an applied entry is deleted)."""
    query = select(func.count()).select_from(IndexOutbox).where(IndexOutbox.id.in_(list(ids)))
    return int((await db.execute(query)).scalar_one())
