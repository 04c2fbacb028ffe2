"""Whether derivation and indexing are getting on with their work, read from the database: what /health
reports beside its probes, and what the health metric records.

Indexing is behind when a write has waited longer than ``health.index_stall_s`` to reach the search
index. Derivation is unhealthy when a worker says it is paused (a dependency down, an LLM refusing its
key), or when messages have waited longer than ``health.derivation_stall_s`` and no worker finished a
batch meanwhile, or none has been heard from at all (workers that cannot start, or all dead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rapport import metrics
from rapport.settings import Settings
from storage import derivation, dreams, outbox, webhooks, workers
from storage.db import Database


@dataclass
class Backlogs:
    """The index's and the deriver's state, as /health shows them, and what is wrong (part, reason)."""

    index: dict[str, Any]
    deriver: dict[str, Any]
    problems: list[tuple[str, str]] = field(default_factory=list)
    dreams: dict[str, int] = field(default_factory=dict)  # by status (reported, never degrading)
    webhooks: dict[str, Any] = field(default_factory=dict)  # deliveries waiting and failed (the same)


async def assess(database: Database, settings: Settings) -> Backlogs:
    async with database.autocommit() as db:
        lag = await outbox.lag(db)
        work = await derivation.lag(db)
        alive = await workers.alive(db, "deriver") if settings.deriver.deriving else []
        dreamt = await dreams.counts(db)
        deliveries = await webhooks.backlog(db)
    limits = settings.health
    index = {"pending": lag.pending, "parked": lag.parked, "oldest_s": round(lag.oldest_s, 3)}
    deriver: dict[str, Any] = {"pending": work.pending, "parked": work.parked, "oldest_s": work.oldest_s}
    found = Backlogs(index, deriver)
    found.dreams = dreamt
    found.webhooks = {
        "pending": deliveries.pending,
        "failed": deliveries.failed,
        "oldest_s": round(deliveries.oldest_s, 3),
    }
    if lag.pending and lag.oldest_s > limits.index_stall_s:
        found.problems.append(
            (
                "index",
                f"the search index is behind: {lag.pending} writes wait, the oldest for {lag.oldest_s:.0f} s "
                f"(health.index_stall_s {limits.index_stall_s:.0f})",
            )
        )
    if not settings.deriver.deriving:
        deriver["status"] = "off"
        return found
    deriver["workers"] = len(alive)
    paused = [w for w in alive if w.state == "paused"]
    stalled = work.pending and work.oldest_s > limits.derivation_stall_s
    progress = max((w.progress_at for w in alive if w.progress_at), default=None)
    quiet_s = (datetime.now(UTC) - progress).total_seconds() if progress else None
    reason = None
    if paused:
        reason = f"derivation is paused on {len(paused)} of {len(alive)} worker(s): {paused[0].detail}"
    elif stalled and not alive:
        reason = (
            f"no derivation worker has been heard from while {work.pending} messages wait, the oldest "
            f"for {work.oldest_s:.0f} s"
        )
    elif stalled and (quiet_s is None or quiet_s > limits.derivation_stall_s):
        since = (
            "no batch has been derived yet" if quiet_s is None else f"the last batch was {quiet_s:.0f} s ago"
        )
        reason = (
            f"derivation is not progressing: {work.pending} messages wait, the oldest for "
            f"{work.oldest_s:.0f} s, and {since} (health.derivation_stall_s {limits.derivation_stall_s:.0f})"
        )
    deriver["status"] = reason or "ok"
    if reason:
        found.problems.append(("deriver", reason))
    return found


async def observe(database: Database, settings: Settings | None = None) -> Backlogs:
    """Set the gauges read from the database: what waits for the deriver and for the index, and (given
    the settings) whether indexing and derivation are degraded. Run by the process that applies the
    index outbox (one per deployment), and by ``/metrics`` and ``/health`` before they answer."""
    found = await assess(database, settings or Settings.model_validate({"deriver": {"enabled": False}}))
    metrics.DERIVATION_PENDING.set(found.deriver["pending"])
    metrics.DERIVATION_OLDEST.set(found.deriver["oldest_s"])
    metrics.DERIVATION_PARKED.set(found.deriver["parked"])
    metrics.INDEX_LAG.set(found.index["pending"])
    metrics.INDEX_LAG_AGE.set(found.index["oldest_s"])
    metrics.INDEX_PARKED.set(found.index["parked"])
    for status, count in found.dreams.items():
        metrics.DREAMS_QUEUED.set(count, status=status)
    metrics.WEBHOOK_DELIVERIES.set(found.webhooks["pending"], status="pending")
    metrics.WEBHOOK_DELIVERIES.set(found.webhooks["failed"], status="failed")
    # Parts of their own: /health's "index" also counts its probe of the index, which this does not make.
    degraded = {part for part, _ in found.problems}
    metrics.HEALTH_DEGRADED.set(float("index" in degraded), part="index_backlog")
    if settings is not None:
        metrics.HEALTH_DEGRADED.set(float("deriver" in degraded), part="deriver_backlog")
    return found
