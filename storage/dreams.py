"""Dreams, stored: the queue of consolidation passes, conclusions superseded instead of deleted, and
peer cards derived from the most reinforced conclusions.

The queue holds at most one open (pending or running) dream per (observer, observed) pair; asking
again while one is open asks nothing more. A worker claims a due dream with a lease (a fresh token);
its outcome is stored only while that lease is its own (``LeaseLost`` otherwise), as derivation's is.
A failed dream is retried with backoff and marked failed after its last attempt, with the error.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from storage.collections import RESERVED_NAME, pair_ids
from storage.derivation import LeaseLost, backoff_s
from storage.ids import new_id
from storage.query import Record, record_columns
from storage.tables import App, Collection, Document, Dream, PeerCard, User
from storage.workspaces import pair_named

CARD_LINES = 12  # lines of a derived card
REASONS = ("scheduled", "requested", "batch")


@dataclass(frozen=True, slots=True)
class DreamClaim:
    id: str
    token: str
    app_id: str
    observer_id: str
    observed_id: str
    attempts: int


async def request(
    db: AsyncConnection, app_id: str, observer_id: str, observed_id: str, *, reason: str, delay_s: float = 0.0
) -> bool:
    """Queue a dream of the pair (due in ``delay_s``); False if one is open already."""
    assert reason in REASONS
    statement = (
        pg_insert(Dream)
        .values(
            id=new_id(),
            app_id=app_id,
            observer_id=observer_id,
            observed_id=observed_id,
            reason=reason,
            not_before=func.now() + timedelta(seconds=delay_s),
        )
        .on_conflict_do_nothing(
            index_elements=[Dream.observer_id, Dream.observed_id],
            index_where=Dream.status.in_(("pending", "running")),
        )
        .returning(Dream.id)
    )
    return (await db.execute(statement)).first() is not None


async def claim(db: AsyncConnection, *, lease_s: float) -> DreamClaim | None:
    """The next due dream (pending and due, or running with its lease run out), leased to the caller."""
    due = (
        select(Dream.id)
        .where(
            or_(
                and_(Dream.status == "pending", Dream.not_before <= func.now()),
                and_(Dream.status == "running", Dream.leased_until < func.now()),
            )
        )
        .order_by(Dream.not_before)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    token = uuid.uuid4().hex
    row = (
        await db.execute(
            update(Dream)
            .where(Dream.id == due)
            .values(
                status="running",
                token=token,
                leased_until=func.now() + timedelta(seconds=lease_s),
                attempts=Dream.attempts + 1,
            )
            .returning(Dream.id, Dream.app_id, Dream.observer_id, Dream.observed_id, Dream.attempts)
        )
    ).first()
    if row is None:
        return None
    return DreamClaim(row.id, token, row.app_id, row.observer_id, row.observed_id, row.attempts)


def _held(held: DreamClaim) -> Any:
    return and_(Dream.id == held.id, Dream.token == held.token, Dream.status == "running")


async def renew(db: AsyncConnection, held: DreamClaim, *, lease_s: float) -> bool:
    found = await db.execute(
        update(Dream)
        .where(_held(held))
        .values(leased_until=func.now() + timedelta(seconds=lease_s))
        .returning(Dream.id)
    )
    return found.first() is not None


async def finish(db: AsyncConnection, held: DreamClaim, result: dict[str, Any]) -> None:
    """Record the dream done, in the transaction that stored its outcome; LeaseLost if it is no longer
    the caller's (that transaction must then roll back)."""
    found = await db.execute(
        update(Dream)
        .where(_held(held))
        .values(status="done", result=result, error=None, token=None, finished_at=func.now())
        .returning(Dream.id)
    )
    if found.first() is None:
        raise LeaseLost(f"the lease on dream {held.id} was lost; another worker has it now")


async def fail(db: AsyncConnection, held: DreamClaim, error: str, *, max_attempts: int) -> bool:
    """Count a failed attempt: due again after a backoff, or failed for good after ``max_attempts``
    (True then; False too when the lease was lost meanwhile, which changes nothing)."""
    final = held.attempts >= max_attempts
    values: dict[str, Any] = {"error": error[:2000], "token": None}
    if final:
        values |= {"status": "failed", "finished_at": func.now()}
    else:
        delay = timedelta(seconds=backoff_s(held.attempts))
        values |= {"status": "pending", "not_before": func.now() + delay}
    updated = await db.execute(update(Dream).where(_held(held)).values(**values).returning(Dream.id))
    return final and updated.first() is not None


async def release(db: AsyncConnection, held: DreamClaim, *, delay_s: float) -> None:
    """Give the dream back uncounted (an outage), due again in ``delay_s``."""
    await db.execute(
        update(Dream)
        .where(_held(held))
        .values(
            status="pending",
            token=None,
            attempts=Dream.attempts - 1,
            not_before=func.now() + timedelta(seconds=delay_s),
        )
    )


async def counts(db: AsyncConnection, app_id: str | None = None) -> dict[str, int]:
    """Dreams by status (of one app, or all)."""
    query = select(Dream.status, func.count()).group_by(Dream.status)
    if app_id is not None:
        query = query.where(Dream.app_id == app_id)
    found = dict((await db.execute(query)).all())
    return {status: int(found.get(status, 0)) for status in ("pending", "running", "done", "failed")}


# --- scheduling -----------------------------------------------------------------------------------------

_DUE = text(
    """
    SELECT c.app_id, COALESCE(c.observer_id, c.user_id) AS observer_id, c.user_id AS observed_id
    FROM collections c
    JOIN apps a ON a.id = c.app_id
    JOIN documents d ON d.collection_id = c.id AND d.invalid_at IS NULL
        AND d.created_at > now() - make_interval(days => :lookback_days)
        AND COALESCE(d.metadata ->> 'source', '') <> 'dream'
    WHERE (c.observer_id IS NOT NULL OR c.name = :reserved)
      AND COALESCE((a.configuration -> 'dream' ->> 'enabled')::boolean, true)
      AND d.created_at > COALESCE(
          (SELECT max(dr.created_at) FROM dreams dr
           WHERE dr.observer_id = COALESCE(c.observer_id, c.user_id) AND dr.observed_id = c.user_id),
          '-infinity')
      AND NOT EXISTS (
          SELECT 1 FROM dreams o WHERE o.observer_id = COALESCE(c.observer_id, c.user_id)
          AND o.observed_id = c.user_id AND o.status IN ('pending', 'running'))
    GROUP BY 1, 2, 3
    HAVING count(*) >= :threshold AND max(d.created_at) < now() - make_interval(secs => :idle_s)
    LIMIT :limit
    """
)


LOOKBACK_DAYS = 14  # conclusions older than this do not count towards a scheduled dream
SCHEDULER_LOCK = 0x52415044  # one scheduling round at a time over every process ("RAPD")


async def schedule_due(db: AsyncConnection, *, threshold: int, idle_s: float, limit: int = 100) -> int:
    """Queue a dream for each pair with at least ``threshold`` valid conclusions newer than its last
    dream (or any, if it never dreamt) and from the last ``LOOKBACK_DAYS``, none newer than ``idle_s``
    (the peer has gone quiet), in a workspace whose ``configuration.dream.enabled`` is not false. A
    dream's own deductions do not count. One process schedules at a time (the others skip the round).
    How many were queued."""
    locked = (await db.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SCHEDULER_LOCK})).scalar()
    if not locked:
        return 0
    rows = await db.execute(
        _DUE,
        {
            "reserved": RESERVED_NAME,
            "threshold": threshold,
            "idle_s": idle_s,
            "limit": limit,
            "lookback_days": LOOKBACK_DAYS,
        },
    )
    queued = 0
    for row in rows.all():
        queued += await request(db, row.app_id, row.observer_id, row.observed_id, reason="scheduled")
    return queued


async def purge_finished(db: AsyncConnection, *, older_than_days: float) -> int:
    """Delete dreams finished longer ago than ``older_than_days``, except each pair's latest (the
    scheduler counts new conclusions from it)."""
    newer = aliased(Dream)
    later = (
        select(newer.id)
        .where(
            newer.observer_id == Dream.observer_id,
            newer.observed_id == Dream.observed_id,
            newer.seq > Dream.seq,
        )
        .exists()
    )
    gone = await db.execute(
        delete(Dream)
        .where(
            Dream.status.in_(("done", "failed")),
            Dream.finished_at < func.now() - timedelta(days=older_than_days),
            later,
        )
        .returning(Dream.id)
    )
    return len(gone.all())


async def pairs_of_app(db: AsyncConnection, app_id: str) -> list[tuple[str, str]]:
    """Every (observer, observed) pair of the app that holds a conclusion (a batch dream's work)."""
    query = (
        select(func.coalesce(Collection.observer_id, Collection.user_id), Collection.user_id)
        .where(
            Collection.app_id == app_id,
            or_(Collection.observer_id.is_not(None), Collection.name == RESERVED_NAME),
            select(Document.id).where(Document.collection_id == Collection.id).exists(),
        )
        .order_by(Collection.seq)
    )
    return [(a, b) for a, b in (await db.execute(query)).all()]


# --- supersession -------------------------------------------------------------------------------------


async def valid_of(db: AsyncConnection, collection_id: str, *, limit: int) -> list[Record]:
    """The collection's conclusions that still hold, newest first, at most ``limit``."""
    query = (
        select(*record_columns(Document))
        .where(Document.collection_id == collection_id, Document.invalid_at.is_(None))
        .order_by(Document.created_at.desc(), Document.seq.desc())
        .limit(limit)
    )
    return list((await db.execute(query)).all())


Reason = Literal["duplicate", "contradiction"]


async def supersede(db: AsyncConnection, old_id: str, new_id_: str, reason: Reason) -> bool:
    """Mark ``old_id`` no longer holding, replaced by ``new_id_`` (if it still held): merged into it as
    a near-duplicate, or contradicted by it (``metadata.superseded_as``)."""
    found = await db.execute(
        update(Document)
        .where(Document.id == old_id, Document.invalid_at.is_(None))
        .values(
            invalid_at=func.now(),
            superseded_by=new_id_,
            metadata_=Document.metadata_.op("||")(func.jsonb_build_object("superseded_as", reason)),
        )
        .returning(Document.id)
    )
    return found.first() is not None


@dataclass(frozen=True, slots=True)
class Superseded:
    reason: str | None
    by: str | None


async def invalid_among(db: AsyncConnection, ids: Sequence[str]) -> dict[str, Superseded]:
    """Those of these conclusions that no longer hold: why, and what replaced them."""
    if not ids:
        return {}
    rows = await db.execute(
        select(Document.id, Document.metadata_["superseded_as"].astext, Document.superseded_by).where(
            Document.id.in_(list(ids)), Document.invalid_at.is_not(None)
        )
    )
    return {row[0]: Superseded(row[1], row[2]) for row in rows}


async def replaced_by(
    db: AsyncConnection, ids: Sequence[str], *, sessions: Sequence[str] | None = None
) -> dict[str, list[Record]]:
    """What each of these conclusions contradicted and replaced, oldest first (merged near-duplicates
    are not a change, and are left out); only those drawn from ``sessions`` when given."""
    if not ids:
        return {}
    query = (
        select(*record_columns(Document))
        .where(
            Document.superseded_by.in_(list(ids)),
            Document.metadata_["superseded_as"].astext == "contradiction",
        )
        .order_by(Document.created_at, Document.seq)
    )
    if sessions is not None:
        query = query.where(Document.session_id.in_(list(sessions)))
    found: dict[str, list[Record]] = {}
    for row in await db.execute(query):
        found.setdefault(row.superseded_by, []).append(row)
    return found


async def history(db: AsyncConnection, collection_id: str, *, limit: int = 100) -> list[Record]:
    """The collection's superseded conclusions, latest superseded first, each with what replaced it
    (``replacement``, null if that was deleted)."""
    replacement = aliased(Document)
    query = (
        select(*record_columns(Document), replacement.content.label("replacement"))
        .outerjoin(replacement, replacement.id == Document.superseded_by)
        .where(Document.collection_id == collection_id, Document.invalid_at.is_not(None))
        .order_by(Document.invalid_at.desc(), Document.seq.desc())
        .limit(limit)
    )
    return [cast(Record, row) for row in await db.execute(query)]


# --- derived peer cards -----------------------------------------------------------------------------------


def _times_derived() -> Any:
    return func.coalesce(Document.metadata_["times_derived"].as_integer(), 1)


async def refresh_card(
    db: AsyncConnection,
    app_id: str,
    observer_id: str,
    observed_id: str,
    collection_id: str,
    *,
    lines: int = CARD_LINES,
) -> list[str] | None:
    """Write the pair's card from its most reinforced valid conclusions (then the newest), unless a card
    was set through the API (never overwritten) or ``peer_card.create`` is false in the observed peer's
    configuration, else its workspace's. The card written, or None when none was (or it is unchanged)."""
    configured = (
        await db.execute(
            select(User.configuration, App.configuration)
            .join(App, App.id == User.app_id)
            .where(User.id == observed_id)
        )
    ).first()
    for configuration in configured or ():  # the peer's says, else the workspace's
        card_config = configuration.get("peer_card") if isinstance(configuration, dict) else None
        create = card_config.get("create") if isinstance(card_config, dict) else None
        if create is False:
            return None
        if create is True:
            break
    query = (
        select(Document.content)
        .where(Document.collection_id == collection_id, Document.invalid_at.is_(None))
        .order_by(_times_derived().desc(), Document.created_at.desc(), Document.seq.desc())
        .limit(lines)
    )
    card = [content[:2000] for content in (await db.execute(query)).scalars()]
    if not card:
        return None
    statement = pg_insert(PeerCard).values(
        observer_id=observer_id, observed_id=observed_id, app_id=app_id, card=card, derived=True
    )
    written = await db.execute(
        statement.on_conflict_do_update(
            index_elements=[PeerCard.observer_id, PeerCard.observed_id],
            set_={"card": statement.excluded.card, "updated_at": func.now()},
            # a card set through the API stays; an unchanged one is not rewritten
            where=PeerCard.derived.is_(True) & PeerCard.card.is_distinct_from(statement.excluded.card),
        ).returning(PeerCard.observer_id)
    )
    return card if written.first() is not None else None


# --- by name (v3) ---------------------------------------------------------------------------------------


async def request_in(
    db: AsyncConnection, ws: str, observer: str, observed: str | None, *, reason: str
) -> bool:
    """Queue a dream of what ``observer`` holds about ``observed`` (itself when None), by names; 404 for
    a missing workspace or peer. False if one is open already."""
    app_id, seer, seen = await pair_named(db, ws, observer, observed)
    return await request(db, app_id, seer.id, seen.id, reason=reason)


async def history_in(
    db: AsyncConnection, ws: str, observer: str, target: str | None, *, limit: int
) -> list[Record]:
    """The superseded conclusions ``observer`` holds about ``target`` (itself when None), by names."""
    _, seer, seen = await pair_named(db, ws, observer, target)
    found = await pair_ids(db, [(seer.id, seen.id)])
    collection = found.get((seer.id, seen.id))
    return await history(db, collection, limit=limit) if collection is not None else []
