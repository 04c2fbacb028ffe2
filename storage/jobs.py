"""The ledger of batch re-derivation jobs (`rapport derive`): a job row, and one row per user it covers.

A user row goes ``pending`` -> ``running`` (claimed by an actor, its ``owner``) -> ``done`` or
``failed``. ``finish_users`` is called in the transaction that stores the user's new facts, and only
succeeds while that actor still owns the row: a user whose actor was given up on and whose row was
claimed again can never be stored twice. Resuming a job is running it again over what is not done.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import BigInteger, Integer, Text

from storage import derivation
from storage.errors import ConflictError, NotFoundError, StorageError
from storage.ids import new_id

Mode = Literal["replace", "append"]
ACTIVE_STATES = ("running", "cancelling")
HEARTBEAT_STALE_S = 30.0  # a running job whose driver has been silent this long may be resumed


class UserLost(StorageError):
    """The user's row is no longer this actor's (it was given up on and claimed again)."""

    def __init__(self, detail: str, *, ns: Sequence[int] = ()) -> None:
        super().__init__(detail)
        self.ns = list(ns)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    app_id: str
    mode: Mode
    selection: dict[str, Any]
    settings: dict[str, Any]
    model: str
    state: str
    users_total: int
    driver: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    heartbeat_age_s: float | None


@dataclass(frozen=True, slots=True)
class Progress:
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    facts: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed


@dataclass(frozen=True, slots=True)
class Claimed:
    n: int
    user_id: str
    attempts: int  # including this claim


def driver_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_JOB_COLUMNS = (
    "id, app_id, mode, selection, settings, model, state, users_total, driver, heartbeat_at, created_at, "
    "finished_at, extract(epoch FROM now() - heartbeat_at) AS heartbeat_age_s"
)


def _job(row: Any) -> Job:
    age = row.heartbeat_age_s
    return Job(
        row.id,
        row.app_id,
        row.mode,
        row.selection,
        row.settings,
        row.model,
        row.state,
        int(row.users_total),
        row.driver,
        row.heartbeat_at,
        row.created_at,
        row.finished_at,
        float(age) if age is not None else None,
    )


async def create_job(
    db: AsyncConnection,
    app_id: str,
    *,
    mode: Mode,
    selection: dict[str, Any],
    settings: dict[str, Any],
    model: str,
) -> str:
    """A new job covering no users yet (``add_*`` adds them, in the same transaction)."""
    job_id = new_id()
    await db.execute(
        text(
            "INSERT INTO derivation_jobs (id, app_id, mode, selection, settings, model, state, driver, "
            "heartbeat_at) VALUES (:id, :app_id, :mode, :selection, :settings, :model, 'running', :driver, now())"
        ).bindparams(bindparam("selection", type_=JSONB), bindparam("settings", type_=JSONB)),
        {
            "id": job_id,
            "app_id": app_id,
            "mode": mode,
            "selection": selection,
            "settings": settings,
            "model": model,
            "driver": driver_name(),
        },
    )
    return job_id


async def add_all_users(db: AsyncConnection, job_id: str, app_id: str, *, since: datetime | None) -> int:
    """Every user of the app (with a message stored at or after ``since``, if given), numbered in the
    order they were created, but the assistant peer Rapport made for v1 sessions (whose memory no v1
    session holds). One statement: no user id passes through this process."""
    result = await db.execute(
        text(
            """
            INSERT INTO derivation_job_users (job_id, n, user_id)
            SELECT :job_id, row_number() OVER (ORDER BY u.seq), u.id FROM users u
            WHERE u.app_id = :app_id AND NOT u.assistant
              AND (CAST(:since AS timestamptz) IS NULL OR EXISTS (
                    SELECT 1 FROM messages m WHERE m.user_id = u.id AND m.created_at >= :since))
            """
        ),
        {"job_id": job_id, "app_id": app_id, "since": since},
    )
    return await _set_total(db, job_id, result.rowcount)


async def add_users(
    db: AsyncConnection, job_id: str, app_id: str, user_ids: Sequence[str], *, start: int
) -> list[str]:
    """Add a page of named users, numbered from ``start`` + 1 (repeats are skipped); returns the ids
    that are not users of the app."""
    ids = list(dict.fromkeys(user_ids))
    known = {
        row[0]
        for row in await db.execute(
            text("SELECT id FROM users WHERE app_id = :app_id AND id = ANY(:ids)").bindparams(
                bindparam("ids", type_=ARRAY(Text))
            ),
            {"app_id": app_id, "ids": ids},
        )
    }
    await db.execute(
        text(
            """
            INSERT INTO derivation_job_users (job_id, n, user_id)
            SELECT :job_id, :start + t.i, t.id FROM unnest(:ids) WITH ORDINALITY AS t(id, i)
            ON CONFLICT (job_id, user_id) DO NOTHING
            """
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"job_id": job_id, "start": start, "ids": [i for i in ids if i in known]},
    )
    return [i for i in ids if i not in known]


async def seal_users(db: AsyncConnection, job_id: str) -> int:
    """Record how many users the job covers, once they are all added."""
    total = (
        await db.execute(text("SELECT count(*) FROM derivation_job_users WHERE job_id = :j"), {"j": job_id})
    ).scalar_one()
    return await _set_total(db, job_id, int(total))


async def _set_total(db: AsyncConnection, job_id: str, total: int) -> int:
    await db.execute(
        text("UPDATE derivation_jobs SET users_total = :total WHERE id = :id"), {"total": total, "id": job_id}
    )
    return total


async def get_job(db: AsyncConnection, job_id: str) -> Job:
    row = (
        await db.execute(text(f"SELECT {_JOB_COLUMNS} FROM derivation_jobs WHERE id = :id"), {"id": job_id})
    ).first()
    if row is None:
        raise NotFoundError(f"there is no derivation job {job_id!r}; `rapport jobs list` shows them")
    return _job(row)


async def list_jobs(db: AsyncConnection, *, app_id: str | None = None, limit: int = 50) -> list[Job]:
    rows = await db.execute(
        text(
            f"SELECT {_JOB_COLUMNS} FROM derivation_jobs "
            "WHERE CAST(:app_id AS text) IS NULL OR app_id = :app_id ORDER BY created_at DESC LIMIT :limit"
        ),
        {"app_id": app_id, "limit": limit},
    )
    return [_job(row) for row in rows]


async def take_over(db: AsyncConnection, job_id: str) -> Job:
    """Make this process the job's driver (to resume it): refused while another driver is alive or when
    the job has ended. Users left ``running`` by the previous driver's actors are pending again."""
    job = await get_job(db, job_id)
    if job.state in ("done", "cancelled"):
        raise ConflictError(f"job {job_id} has ended ({job.state}); start a new one instead")
    if (
        job.state in ACTIVE_STATES
        and job.heartbeat_age_s is not None
        and job.heartbeat_age_s < HEARTBEAT_STALE_S
    ):
        raise ConflictError(
            f"job {job_id} is being run by {job.driver} (seen {job.heartbeat_age_s:.0f}s ago); "
            f"stop that one first, or wait {HEARTBEAT_STALE_S:.0f}s if it died"
        )
    await release_all(db, job_id)
    await db.execute(
        text(
            "UPDATE derivation_jobs SET state = 'running', driver = :driver, heartbeat_at = now() WHERE id = :id"
        ),
        {"id": job_id, "driver": driver_name()},
    )
    return await get_job(db, job_id)


async def heartbeat(db: AsyncConnection, job_id: str) -> str:
    """The driver is alive; returns the job's state (an operator may have asked to cancel it)."""
    row = (
        await db.execute(
            text("UPDATE derivation_jobs SET heartbeat_at = now() WHERE id = :id RETURNING state"),
            {"id": job_id},
        )
    ).first()
    if row is None:
        raise NotFoundError(f"there is no derivation job {job_id!r}; `rapport jobs list` shows them")
    return str(row.state)


async def set_state(db: AsyncConnection, job_id: str, state: str) -> None:
    finished = state in ("done", "cancelled")
    await db.execute(
        text(
            "UPDATE derivation_jobs SET state = :state, heartbeat_at = now(), "
            "finished_at = CASE WHEN :finished THEN now() ELSE NULL END WHERE id = :id"
        ),
        {"id": job_id, "state": state, "finished": finished},
    )


async def cancel(db: AsyncConnection, job_id: str) -> str:
    """Ask a job to stop: no user is started after this, those being derived finish. A job with no
    driver alive is cancelled at once. Returns the new state."""
    job = await get_job(db, job_id)
    if job.state in ("done", "cancelled"):
        raise ConflictError(f"job {job_id} has already ended ({job.state})")
    alive = job.state in ACTIVE_STATES and (job.heartbeat_age_s or 0.0) < HEARTBEAT_STALE_S
    state = "cancelling" if alive else "cancelled"
    if not alive:
        await release_all(db, job_id)
    await set_state(db, job_id, state)
    return state


# --- users ----------------------------------------------------------------------------------------------

_NS = bindparam("ns", type_=ARRAY(BigInteger))


async def claim_users(db: AsyncConnection, job_id: str, owner: str, limit: int) -> list[Claimed]:
    """The job's next pending users, in order, for ``owner``; none once the job is not running."""
    rows = await db.execute(
        text(
            """
            UPDATE derivation_job_users u SET state = 'running', owner = :owner, attempts = u.attempts + 1
            FROM (
                SELECT n FROM derivation_job_users
                WHERE job_id = :job_id AND state = 'pending'
                  AND EXISTS (SELECT 1 FROM derivation_jobs WHERE id = :job_id AND state = 'running')
                ORDER BY n LIMIT :limit FOR UPDATE SKIP LOCKED
            ) next
            WHERE u.job_id = :job_id AND u.n = next.n
            RETURNING u.n, u.user_id, u.attempts
            """
        ),
        {"job_id": job_id, "owner": owner, "limit": limit},
    )
    return sorted((Claimed(r.n, r.user_id, r.attempts) for r in rows), key=lambda c: c.n)


async def finish_users(
    db: AsyncConnection, job_id: str, owner: str, done: Sequence[tuple[int, int, int]]
) -> None:
    """Mark users (n, messages, facts) done, in the transaction that stores their facts; ``UserLost``
    (rolling that transaction back) if one is no longer ``owner``'s."""
    rows = await db.execute(
        text(
            """
            UPDATE derivation_job_users u SET state = 'done', owner = NULL, error = NULL,
                messages = d.messages, facts = d.facts, done_at = now()
            FROM unnest(:ns, :messages, :facts) AS d(n, messages, facts)
            WHERE u.job_id = :job_id AND u.n = d.n AND u.state = 'running' AND u.owner = :owner
            RETURNING u.n
            """
        ).bindparams(
            _NS, bindparam("messages", type_=ARRAY(Integer)), bindparam("facts", type_=ARRAY(Integer))
        ),
        {
            "job_id": job_id,
            "owner": owner,
            "ns": [n for n, _, _ in done],
            "messages": [m for _, m, _ in done],
            "facts": [f for _, _, f in done],
        },
    )
    lost = {n for n, _, _ in done} - {row.n for row in rows}
    if lost:
        raise UserLost(f"users #{sorted(lost)} of job {job_id} are no longer this actor's", ns=sorted(lost))


async def fail_user(
    db: AsyncConnection, job_id: str, n: int, owner: str, error: str, *, max_attempts: int
) -> str:
    """Count a failed attempt: pending again, or ``failed`` (with the reason) after ``max_attempts``.
    Returns the user's new state (or "lost" if it was not ``owner``'s any more)."""
    row = (
        await db.execute(
            text(
                "UPDATE derivation_job_users SET owner = NULL, error = :error, "
                "state = CASE WHEN attempts >= :max_attempts THEN 'failed' ELSE 'pending' END "
                "WHERE job_id = :job_id AND n = :n AND state = 'running' AND owner = :owner RETURNING state"
            ),
            {"job_id": job_id, "n": n, "owner": owner, "error": error[:2000], "max_attempts": max_attempts},
        )
    ).first()
    return str(row.state) if row else "lost"


async def release_users(db: AsyncConnection, job_id: str, owner: str, ns: Iterable[int]) -> None:
    """Give users back without counting an attempt (a dependency is down, or the actor is stopping)."""
    await db.execute(
        text(
            "UPDATE derivation_job_users SET state = 'pending', owner = NULL, attempts = greatest(0, attempts - 1) "
            "WHERE job_id = :job_id AND owner = :owner AND state = 'running' AND n = ANY(:ns)"
        ).bindparams(_NS),
        {"job_id": job_id, "owner": owner, "ns": list(ns)},
    )


async def give_up_owner(
    db: AsyncConnection, job_id: str, owner: str, *, max_attempts: int, reason: str
) -> int:
    """An actor died: its users are pending again, or ``failed`` once they have been claimed
    ``max_attempts`` times (a user that kills every actor that takes it must not stall the job). The
    derivation leases it held on their sessions are released. Returns how many users it held."""
    rows = await db.execute(
        text(
            "UPDATE derivation_job_users SET owner = NULL, "
            "state = CASE WHEN attempts >= :max_attempts THEN 'failed' ELSE 'pending' END, "
            "error = CASE WHEN attempts >= :max_attempts THEN :reason ELSE error END "
            "WHERE job_id = :job_id AND owner = :owner AND state = 'running' RETURNING n"
        ),
        {"job_id": job_id, "owner": owner, "max_attempts": max_attempts, "reason": reason[:2000]},
    )
    held = len(rows.all())
    await derivation.release_owners(db, [owner])
    return held


async def release_all(db: AsyncConnection, job_id: str) -> int:
    """Every user left ``running`` (by a driver that is gone) is pending again, without an attempt."""
    rows = await db.execute(
        text(
            "UPDATE derivation_job_users SET state = 'pending', owner = NULL, attempts = greatest(0, attempts - 1) "
            "WHERE job_id = :job_id AND state = 'running' RETURNING owner"
        ),
        {"job_id": job_id},
    )
    owners = sorted({row.owner for row in rows if row.owner})
    await derivation.release_owners(db, owners)
    return len(owners)


async def progress(db: AsyncConnection, job_id: str) -> Progress:
    row = (
        await db.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
                       count(*) FILTER (WHERE state = 'running') AS running,
                       count(*) FILTER (WHERE state = 'done') AS done,
                       count(*) FILTER (WHERE state = 'failed') AS failed,
                       coalesce(sum(facts), 0) AS facts
                FROM derivation_job_users WHERE job_id = :job_id
                """
            ),
            {"job_id": job_id},
        )
    ).one()
    return Progress(int(row.pending), int(row.running), int(row.done), int(row.failed), int(row.facts))


async def failures(db: AsyncConnection, job_id: str, *, limit: int = 20) -> list[tuple[str, int, str]]:
    """Failed users (id, attempts, why), the first ``limit``."""
    rows = await db.execute(
        text(
            "SELECT user_id, attempts, coalesce(error, '') AS error FROM derivation_job_users "
            "WHERE job_id = :job_id AND state = 'failed' ORDER BY n LIMIT :limit"
        ),
        {"job_id": job_id, "limit": limit},
    )
    return [(row.user_id, row.attempts, row.error) for row in rows]
