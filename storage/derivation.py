"""The derivation queue: one item per stored message (queued by a trigger, migration 0004), worked a
session at a time, in message order.

A worker claims one session with a lease (a fresh token each time) and takes its pending items in one
batch, bounded by tokens. No transaction or row lock is held while the model works: the claim commits
at once, and the outcome is recorded later, in the transaction that stores what was derived, only if
the lease is still that claim's (``LeaseLost`` otherwise, and that transaction rolls back). A worker
that dies only delays its session by the lease. A session waits at most ``wait_s`` for more messages
before its batch is taken; a batch that fails is retried alone, head item first, with exponential
backoff, and parked after ``max_attempts`` with the reason and the model's raw output.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Interval, Text

from storage.errors import StorageError

log = logging.getLogger(__name__)


class LeaseLost(StorageError):
    """The claim's lease expired and another worker took the session: this outcome must not be stored."""

    def __init__(self, detail: str, *, users: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.users = list(users)  # whose leases were lost, when a job completes several users

    @classmethod
    def of(cls, held: Claim) -> LeaseLost:
        return cls(f"the lease on session {held.session_id} was lost; another worker has it now")


@dataclass(frozen=True, slots=True)
class Item:
    message_id: str
    seq: int
    tokens: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Claim:
    """A session's batch, held by ``token`` until the lease ends."""

    token: str
    app_id: str
    user_id: str
    session_id: str
    items: tuple[Item, ...]

    @property
    def message_ids(self) -> list[str]:
        return [item.message_id for item in self.items]


@dataclass(frozen=True, slots=True)
class Counts:
    pending: int = 0
    in_progress: int = 0
    retrying: int = 0
    parked: int = 0
    done: int = 0
    oldest_pending_s: float = 0.0


# What each app is deriving now: its live leases' distinct holders (a queue claim, or a batch job's actor).
_HELD = """
    SELECT app_id, count(DISTINCT lease_owner) AS n FROM derivation_sessions
    WHERE lease_owner IS NOT NULL AND leased_until > now()
"""

# Sessions with work that is due: waiting since at least ``wait`` or filling a batch already, not held
# by a live lease and not backing off, of an app under its cap (its own in ``caps``, a JSON object by app
# id, else ``per_app``; 0 for none). Apps take turns: the app deriving least now goes first, then the one
# served longest ago, then the oldest work. Read from the covering index of pending items and the index
# of held leases.
_DUE = text(
    f"""
    WITH held AS ({_HELD} GROUP BY app_id),
    caps AS (SELECT key AS app_id, CAST(value AS int) AS cap FROM jsonb_each_text(CAST(:caps AS jsonb)))
    SELECT q.session_id, min(q.app_id) AS app_id, min(q.user_id) AS user_id,
           NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = q.session_id) AS gone
    FROM derivation_queue q
    LEFT JOIN held h ON h.app_id = q.app_id
    LEFT JOIN derivation_apps a ON a.app_id = q.app_id
    LEFT JOIN caps c ON c.app_id = q.app_id
    WHERE q.status = 'pending'
    GROUP BY q.session_id
    HAVING (min(q.created_at) <= now() - :wait OR sum(q.tokens) >= :max_tokens)
       AND NOT EXISTS (
            SELECT 1 FROM derivation_sessions d
            WHERE d.session_id = q.session_id AND (d.leased_until > now() OR d.not_before > now())
       )
       AND (coalesce(min(c.cap), :per_app) = 0 OR coalesce(min(h.n), 0) < coalesce(min(c.cap), :per_app))
    ORDER BY coalesce(min(h.n), 0), min(a.last_claim_at) NULLS FIRST, min(q.created_at)
    LIMIT :candidates
    """
).bindparams(bindparam("wait", type_=Interval))

# One claim at a time counts an app's leases (limits.app_derivations). Tried, never waited for: a claim
# that waited here while holding another app's lock, or a session row it failed to lease, could deadlock
# with the claim it waits for.
_APP_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended('rapport.derive:' || :app_id, 0))")
_APP_HELD = text(f"{_HELD} AND app_id = :app_id GROUP BY app_id")
# Take the lease unless another worker just did (the row is created by a session's first claim, if the
# session still exists: an erasure may have deleted it since the candidates were read); if taken,
# take the app's turn (clock time, not the transaction's: claims at the same instant are ordered) and read
# the session's pending items in message order. One statement: no row if the lease was not taken, one row
# of nulls if it was but nothing is pending any more.
_LEASE = text(
    """
    WITH lease AS (
        INSERT INTO derivation_sessions AS d (session_id, app_id, user_id, lease_owner, leased_until)
        SELECT id, :app_id, :user_id, :token, now() + :lease FROM sessions WHERE id = :session_id
        ON CONFLICT (session_id) DO UPDATE
            SET lease_owner = excluded.lease_owner, leased_until = excluded.leased_until
            WHERE (d.leased_until IS NULL OR d.leased_until <= now()) AND (d.not_before IS NULL OR d.not_before <= now())
        RETURNING d.session_id
    ),
    turn AS (
        INSERT INTO derivation_apps (app_id, last_claim_at)
        SELECT :app_id, clock_timestamp() FROM lease
        ON CONFLICT (app_id) DO UPDATE SET last_claim_at = excluded.last_claim_at
    )
    SELECT p.message_id, p.seq, p.tokens, p.attempts
    FROM lease LEFT JOIN LATERAL (
        SELECT message_id, seq, tokens, attempts FROM derivation_queue
        WHERE session_id = lease.session_id AND status = 'pending'
        ORDER BY seq
        LIMIT :limit
    ) p ON true
    ORDER BY p.seq
    """
).bindparams(bindparam("lease", type_=Interval))

# Give the session back: offered again after ``delay`` (zero once its batch is done).
_RELEASE = text(
    "UPDATE derivation_sessions SET lease_owner = NULL, leased_until = NULL, not_before = now() + :delay "
    "WHERE session_id = :session_id AND lease_owner = :token"
).bindparams(bindparam("delay", type_=Interval))

_IDS = bindparam("ids", type_=ARRAY(Text))
CANDIDATES = 8  # due sessions a claim reads at once
CANDIDATE_ROUNDS = 4  # reads of candidates, when the previous one turned up only gone sessions


async def claim(
    db: AsyncConnection,
    *,
    lease_s: float,
    wait_s: float,
    max_tokens: int,
    max_items: int = 64,
    per_app: int = 0,
    caps: Mapping[str, int] | None = None,
) -> Claim | None:
    """Take a due session with its next batch (None if none is): of the app deriving least now, the
    one that has waited longest. Apps that have their cap of derivations in flight are skipped: their
    own in ``caps`` (by app id), else ``per_app``; 0 is no cap. Work whose session is gone is dropped
    on the way, so it never stands in front of the rest."""
    caps = dict(caps or {})
    params = {
        "wait": timedelta(seconds=wait_s),
        "max_tokens": max_tokens,
        "candidates": CANDIDATES,
        "per_app": per_app,
        "caps": json.dumps(caps),
    }
    token = uuid.uuid4().hex
    for _ in range(CANDIDATE_ROUNDS):
        dropped = False
        for row in (await db.execute(_DUE, params)).all():
            if row.gone:
                await _drop_orphans(db, row.session_id)
                dropped = True
                continue
            held = await _lease(db, row, token, caps.get(row.app_id, per_app), lease_s, max_items, max_tokens)
            if held is not None:
                return held
        if not dropped:
            break  # every candidate was busy or capped: nothing else is due
    return None


async def _drop_orphans(db: AsyncConnection, session_id: str) -> None:
    """Drop the work of a session that is gone: no one can derive it, and left in place it would sort
    first in every claim."""
    result = await db.execute(text("DELETE FROM derivation_queue WHERE session_id = :s"), {"s": session_id})
    log.warning("dropped %d queue item(s) of session %s, which no longer exists", result.rowcount, session_id)


async def _lease(
    db: AsyncConnection, row: Any, token: str, cap: int, lease_s: float, max_items: int, max_tokens: int
) -> Claim | None:
    """The candidate's session with its batch, if its lease could be taken (and its app has room)."""
    if cap and not await _app_has_room(db, row.app_id, cap):
        return None
    params = {
        "session_id": row.session_id,
        "app_id": row.app_id,
        "user_id": row.user_id,
        "token": token,
        "lease": timedelta(seconds=lease_s),
    }
    leased = (await db.execute(_LEASE, {**params, "limit": max_items})).all()
    if not leased:
        return None  # another worker took it a moment ago (or the session was just deleted)
    items = [Item(p.message_id, p.seq, p.tokens, p.attempts) for p in leased if p.message_id is not None]
    return Claim(token, row.app_id, row.user_id, row.session_id, tuple(_batch(items, max_tokens)))


async def _app_has_room(db: AsyncConnection, app_id: str, per_app: int) -> bool:
    """Whether the app derives fewer than ``per_app`` batches now, counted under the app's lock (held to
    the end of this claim's transaction) so that two claims cannot both take its last place. False if
    another claim is counting it right now: this claim moves on to another app's work."""
    if not (await db.execute(_APP_LOCK, {"app_id": app_id})).scalar_one():
        return False
    held = (await db.execute(_APP_HELD, {"app_id": app_id})).first()
    return held is None or held.n < per_app


def _batch(items: Sequence[Item], max_tokens: int) -> list[Item]:
    """The head of the queue: alone if it failed before (so one bad message cannot sink its
    neighbours), else as many items as fit in ``max_tokens`` (at least one)."""
    if not items:
        return []
    if items[0].attempts > 0:
        return [items[0]]
    batch: list[Item] = []
    total = 0
    for item in items:
        if batch and total + item.tokens > max_tokens:
            break
        batch.append(item)
        total += item.tokens
    return batch


async def renew(db: AsyncConnection, held: Claim, lease_s: float) -> bool:
    """Extend the lease while work goes on; False if it was lost meanwhile."""
    result = await db.execute(
        text(
            "UPDATE derivation_sessions SET leased_until = now() + :lease "
            "WHERE session_id = :session_id AND lease_owner = :token RETURNING session_id"
        ).bindparams(bindparam("lease", type_=Interval)),
        {"lease": timedelta(seconds=lease_s), "session_id": held.session_id, "token": held.token},
    )
    return result.first() is not None


async def _hold(db: AsyncConnection, held: Claim) -> None:
    """Lock the session row and check the lease is still this claim's; raise LeaseLost if not."""
    row = (
        await db.execute(
            text("SELECT lease_owner FROM derivation_sessions WHERE session_id = :s FOR UPDATE"),
            {"s": held.session_id},
        )
    ).first()
    if row is None or row.lease_owner != held.token:
        raise LeaseLost.of(held)


# Items done (deleted, and counted on the session) and the session released, if the lease is still the
# claim's (one statement; no row if not).
_COMPLETE = text(
    """
    WITH held AS (
        SELECT session_id FROM derivation_sessions
        WHERE session_id = :session_id AND lease_owner = :token
        FOR UPDATE
    ),
    finished AS (
        DELETE FROM derivation_queue
        WHERE session_id IN (SELECT session_id FROM held) AND message_id = ANY(:ids) AND status = 'pending'
        RETURNING 1
    ),
    released AS (
        UPDATE derivation_sessions SET lease_owner = NULL, leased_until = NULL, not_before = now(),
            done = done + (SELECT count(*) FROM finished), last_done_at = now()
        WHERE session_id IN (SELECT session_id FROM held)
    )
    SELECT session_id FROM held
    """
).bindparams(_IDS)


async def complete(db: AsyncConnection, held: Claim, message_ids: Sequence[str]) -> None:
    """Mark these items done and release the session. Call it in the transaction that stores their
    output: if the lease was lost, LeaseLost aborts that transaction and nothing is stored twice."""
    params = {"session_id": held.session_id, "token": held.token, "ids": list(message_ids)}
    if (await db.execute(_COMPLETE, params)).first() is None:
        raise LeaseLost.of(held)


def backoff_s(attempts: int, *, base_s: float = 5.0, max_s: float = 600.0) -> float:
    """Wait before retrying after the ``attempts``-th failure: 5 s, 10 s, 20 s... up to 10 minutes."""
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


async def fail(
    db: AsyncConnection,
    held: Claim,
    error: str,
    *,
    raw_output: str | None = None,
    max_attempts: int,
) -> int:
    """Count a failed attempt on the batch: retried after a backoff, parked (with ``error`` and
    ``raw_output``) once it has failed ``max_attempts`` times. Returns how many items were parked."""
    await _hold(db, held)
    result = await db.execute(
        text(
            """
            UPDATE derivation_queue SET
                attempts = attempts + 1, last_error = :error, raw_output = :raw,
                status = CASE WHEN attempts + 1 >= :max_attempts THEN 'parked' ELSE status END
            WHERE session_id = :session_id AND message_id = ANY(:ids) AND status = 'pending'
            RETURNING status, attempts
            """
        ).bindparams(_IDS),
        {
            "session_id": held.session_id,
            "ids": held.message_ids,
            "error": error[:2000],
            "raw": raw_output[:20000] if raw_output is not None else None,
            "max_attempts": max_attempts,
        },
    )
    rows = result.all()
    still_pending = [r.attempts for r in rows if r.status != "parked"]
    delay = backoff_s(max(still_pending)) if still_pending else 0.0
    await db.execute(
        _RELEASE, {"session_id": held.session_id, "token": held.token, "delay": timedelta(seconds=delay)}
    )
    return sum(r.status == "parked" for r in rows)


async def release(db: AsyncConnection, held: Claim, *, delay_s: float) -> None:
    """Give the session back without spending an attempt (the model or embedder is down): it is
    offered again after ``delay_s``."""
    await db.execute(
        _RELEASE, {"session_id": held.session_id, "token": held.token, "delay": timedelta(seconds=delay_s)}
    )


async def counts(
    db: AsyncConnection,
    *,
    app_id: str | None = None,
    user_id: str | None = None,
    session_id: str | None = None,
) -> Counts:
    """How much derivation work is in each state, for an app, a user or a session (or everything): what
    waits is read from the queue, what was done from the sessions' counts."""
    where, params = ["true"], {}
    for column, value in (("app_id", app_id), ("user_id", user_id), ("session_id", session_id)):
        if value is not None:
            where.append(f"{{t}}.{column} = :{column}")
            params[column] = value
    row = (
        await db.execute(
            text(
                f"""
                SELECT
                    count(*) FILTER (WHERE q.status = 'pending' AND NOT held AND q.attempts = 0) AS pending,
                    count(*) FILTER (WHERE q.status = 'pending' AND held) AS in_progress,
                    count(*) FILTER (WHERE q.status = 'pending' AND NOT held AND q.attempts > 0) AS retrying,
                    count(*) FILTER (WHERE q.status = 'parked') AS parked,
                    (SELECT coalesce(sum(d.done), 0) FROM derivation_sessions d
                     WHERE {" AND ".join(where).format(t="d")}) AS done,
                    extract(epoch FROM now() - min(q.created_at) FILTER (WHERE q.status = 'pending')) AS oldest
                FROM derivation_queue q
                LEFT JOIN derivation_sessions d ON d.session_id = q.session_id
                CROSS JOIN LATERAL (SELECT coalesce(d.leased_until > now(), false) AS held) s
                WHERE {" AND ".join(where).format(t="q")}
                """
            ),
            params,
        )
    ).one()
    return Counts(
        row.pending,
        row.in_progress,
        row.retrying,
        row.parked,
        int(row.done),
        round(float(row.oldest or 0.0), 3),
    )


async def counts_of(
    db: AsyncConnection, app_id: str, user_id: str | None = None, session_id: str | None = None
) -> Counts:
    """``counts`` for an app, a user of it or a session of that user; NotFoundError if it does not exist."""
    from storage import apps, sessions, users

    if session_id is not None and user_id is not None:
        await sessions.get_session(db, app_id, user_id, session_id)
    elif user_id is not None:
        await users.get_user(db, app_id, user_id)
    else:
        await apps.get_app(db, app_id)
    return await counts(db, app_id=app_id, user_id=user_id, session_id=session_id)


async def parked_reasons(
    db: AsyncConnection, *, app_id: str | None = None, limit: int = 10
) -> list[tuple[str, int]]:
    """The most common reasons items were parked, with how many each."""
    rows = await db.execute(
        text(
            "SELECT last_error, count(*) AS n FROM derivation_queue WHERE status = 'parked' "
            "AND (CAST(:app_id AS text) IS NULL OR app_id = :app_id) GROUP BY 1 ORDER BY 2 DESC LIMIT :limit"
        ),
        {"app_id": app_id, "limit": limit},
    )
    return [(row.last_error or "", row.n) for row in rows]


async def retry_parked(db: AsyncConnection, *, app_id: str | None = None) -> int:
    """Queue parked items again with a fresh set of attempts (after fixing what made them fail)."""
    revived = await db.execute(
        text(
            "UPDATE derivation_queue SET status = 'pending', attempts = 0 WHERE status = 'parked' "
            "AND (CAST(:app_id AS text) IS NULL OR app_id = :app_id) RETURNING session_id"
        ),
        {"app_id": app_id},
    )
    rows = revived.all()
    await db.execute(
        text("UPDATE derivation_sessions SET not_before = NULL WHERE session_id = ANY(:ids)").bindparams(
            _IDS
        ),
        {"ids": sorted({row.session_id for row in rows})},
    )
    return len(rows)


@dataclass(frozen=True, slots=True)
class Lag:
    pending: int
    parked: int
    oldest_s: float


async def lag(db: AsyncConnection) -> Lag:
    """What waits, and for how long: from the covering index of pending items (cheap for /health)."""
    waiting = (
        await db.execute(
            text(
                "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS oldest "
                "FROM derivation_queue WHERE status = 'pending'"
            )
        )
    ).one()
    parked = (
        await db.execute(text("SELECT count(*) FROM derivation_queue WHERE status = 'parked'"))
    ).scalar_one()
    return Lag(int(waiting.n), int(parked), round(float(waiting.oldest or 0.0), 3))


# --- a whole user at once (batch re-derivation, storage/jobs.py) ------------------------------------------
# A job derives all of a user's messages in one go. It holds the derivation lease of every session of the
# user meanwhile, with its own token, so the queue's workers leave those sessions alone; when the user's
# facts are stored, the queue items of the messages it derived are done and the leases released. A
# session started while the job ran is not held: its messages, if the job read them, are taken over when
# the job stores (unless a worker holds the session right then), and if it did not read them they are
# left to the queue's workers, whose facts the job keeps.


async def lease_user(db: AsyncConnection, user_id: str, token: str, *, lease_s: float) -> bool:
    """Take the lease on every session of the user; False (holding none) if a worker holds one now."""
    counts = (
        await db.execute(
            text(
                """
                WITH s AS (SELECT id, app_id FROM sessions WHERE user_id = :user_id),
                taken AS (
                    INSERT INTO derivation_sessions AS d (session_id, app_id, user_id, lease_owner, leased_until)
                    SELECT s.id, s.app_id, :user_id, :token, now() + :lease FROM s
                    ON CONFLICT (session_id) DO UPDATE
                        SET lease_owner = excluded.lease_owner, leased_until = excluded.leased_until
                        WHERE d.leased_until IS NULL OR d.leased_until <= now() OR d.lease_owner = excluded.lease_owner
                    RETURNING 1
                )
                SELECT (SELECT count(*) FROM s) AS sessions, (SELECT count(*) FROM taken) AS taken
                """
            ).bindparams(bindparam("lease", type_=Interval)),
            {"user_id": user_id, "token": token, "lease": timedelta(seconds=lease_s)},
        )
    ).one()
    if counts.taken == counts.sessions:
        return True
    await release_user(db, user_id, token)
    return False


async def complete_users(
    db: AsyncConnection, token: str, sessions_of: dict[str, Sequence[str]], message_ids: Sequence[str]
) -> None:
    """These users' messages ``message_ids`` are derived: their queue items are done (no worker derives
    them again) and the users' sessions released. ``sessions_of`` maps each user to the sessions of
    those messages; ``LeaseLost`` if the lease on one of them was lost meanwhile (a worker may have
    derived it)."""
    # Sessions of the derived messages that the job did not lease (started after it leased the user):
    # taken now if no worker holds them, under the row locks the release below takes too.
    await db.execute(
        text(
            """
            INSERT INTO derivation_sessions AS d (session_id, app_id, user_id, lease_owner, leased_until)
            SELECT id, app_id, user_id, :t, now() FROM sessions WHERE id = ANY(:ids)
            ON CONFLICT (session_id) DO UPDATE SET lease_owner = excluded.lease_owner
                WHERE d.lease_owner = excluded.lease_owner OR d.leased_until IS NULL OR d.leased_until <= now()
            """
        ).bindparams(_IDS),
        {"ids": sorted({s for sessions in sessions_of.values() for s in sessions}), "t": token},
    )
    released = {
        row.session_id
        for row in await db.execute(
            text(
                "UPDATE derivation_sessions SET lease_owner = NULL, leased_until = NULL "
                "WHERE user_id = ANY(:ids) AND lease_owner = :t RETURNING session_id"
            ).bindparams(_IDS),
            {"ids": list(sessions_of), "t": token},
        )
    }
    lost = [user for user, sessions in sessions_of.items() if not set(sessions) <= released]
    if lost:
        raise LeaseLost(
            f"the lease on a session of user {lost[0]} was lost; a worker may have derived it", users=lost
        )
    await db.execute(
        text(
            """
            WITH finished AS (
                DELETE FROM derivation_queue WHERE message_id = ANY(:ids) RETURNING session_id
            )
            UPDATE derivation_sessions d SET done = d.done + f.n, last_done_at = now()
            FROM (SELECT session_id, count(*) AS n FROM finished GROUP BY session_id) f
            WHERE d.session_id = f.session_id
            """
        ).bindparams(_IDS),
        {"ids": list(message_ids)},
    )


async def renew_owner(db: AsyncConnection, token: str, *, lease_s: float) -> None:
    """Extend every lease ``token`` holds (a job's actor renews all its users' at once)."""
    await db.execute(
        text(
            "UPDATE derivation_sessions SET leased_until = now() + :lease WHERE lease_owner = :t"
        ).bindparams(bindparam("lease", type_=Interval)),
        {"t": token, "lease": timedelta(seconds=lease_s)},
    )


async def release_owners(db: AsyncConnection, tokens: Sequence[str]) -> None:
    """Release every lease these tokens hold (a job's actors that died or stopped)."""
    if tokens:
        await db.execute(
            text(
                "UPDATE derivation_sessions SET lease_owner = NULL, leased_until = NULL WHERE lease_owner = ANY(:ids)"
            ).bindparams(_IDS),
            {"ids": list(tokens)},
        )


async def release_user(db: AsyncConnection, user_id: str, token: str) -> None:
    await db.execute(
        text(
            "UPDATE derivation_sessions SET lease_owner = NULL, leased_until = NULL "
            "WHERE user_id = :u AND lease_owner = :t"
        ),
        {"u": user_id, "t": token},
    )
