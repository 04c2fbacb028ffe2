"""What each derivation process says of itself (table worker_status), for /health: whether it runs or
is paused (and why), when it last finished a batch, and when it last said anything. A process refreshes
its row every ``HEARTBEAT_S`` and at once when its state changes; a row not refreshed for
``GONE_AFTER_S`` is a process that has gone, and is ignored (and in time deleted)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

HEARTBEAT_S = 30.0
GONE_AFTER_S = 3 * HEARTBEAT_S
FORGET_AFTER_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class WorkerState:
    worker: str
    kind: str
    state: str  # running | paused
    detail: str | None
    progress_at: datetime | None
    seen_at: datetime


async def report(
    db: AsyncConnection, worker: str, kind: str, state: str, detail: str | None, progress_at: datetime | None
) -> None:
    """Record this process's state now (and forget the processes long gone)."""
    await db.execute(
        text("DELETE FROM worker_status WHERE seen_at < now() - make_interval(secs => :s)"),
        {"s": FORGET_AFTER_S},
    )
    await db.execute(
        text(
            """
            INSERT INTO worker_status (worker, kind, state, detail, progress_at, seen_at)
            VALUES (:worker, :kind, :state, :detail, :progress_at, now())
            ON CONFLICT (worker) DO UPDATE SET kind = excluded.kind, state = excluded.state,
                detail = excluded.detail, progress_at = excluded.progress_at, seen_at = now()
            """
        ),
        {
            "worker": worker,
            "kind": kind,
            "state": state,
            "detail": detail[:1000] if detail else None,
            "progress_at": progress_at,
        },
    )


async def retire(db: AsyncConnection, worker: str) -> None:
    """This process stops: its row goes (a stopped process is not a stalled one)."""
    await db.execute(text("DELETE FROM worker_status WHERE worker = :w"), {"w": worker})


async def alive(db: AsyncConnection, kind: str) -> list[WorkerState]:
    """The processes of this kind heard from lately."""
    rows = await db.execute(
        text(
            "SELECT worker, kind, state, detail, progress_at, seen_at FROM worker_status "
            "WHERE kind = :kind AND seen_at >= now() - make_interval(secs => :s) ORDER BY worker"
        ),
        {"kind": kind, "s": GONE_AFTER_S},
    )
    return [WorkerState(*row) for row in rows]
