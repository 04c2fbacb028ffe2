"""Dream workers: the dream queue (storage/dreams.py) as a WorkSource for the queue worker, and the
scheduler that queues a dream for each peer that has gone quiet with enough new conclusions. Both run
beside the derivation workers (cluster/deriver.py ``derive_until``), with the deriver's model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cluster.worker import QueueWorker, WorkerOptions
from pipelines.dreams import Dreamer
from rapport import metrics
from rapport.settings import DreamSettings
from storage import dreams
from storage.db import Database
from storage.derivation import LeaseLost
from storage.dreams import DreamClaim

log = logging.getLogger(__name__)


class DreamSource:
    """Claims a due dream, runs it, and records the outcome on the queue."""

    name = "dreams"

    def __init__(
        self,
        dreamer: Dreamer,
        settings: DreamSettings,
        *,
        lease_s: float,
        outages: tuple[type[BaseException], ...],
    ) -> None:
        self.dreamer = dreamer
        self.settings = settings
        self.lease_s = lease_s
        self.outages = outages
        self.database = dreamer.memory.database

    async def claim(self) -> DreamClaim | None:
        async with self.database.autocommit() as db:
            return await dreams.claim(db, lease_s=self.lease_s)

    async def process(self, work: DreamClaim) -> None:
        await self.dreamer.dream(work.app_id, work.observer_id, work.observed_id, claim=work)

    async def renew(self, work: DreamClaim) -> bool:
        async with self.database.transaction() as db:
            return await dreams.renew(db, work, lease_s=self.lease_s)

    async def failed(self, work: DreamClaim, error: BaseException) -> None:
        if isinstance(error, LeaseLost):
            return  # another worker holds it now and will record it
        metrics.DREAMS.inc(outcome="failed")
        async with self.database.transaction() as db:
            final = await dreams.fail(
                db, work, f"{type(error).__name__}: {error}", max_attempts=self.settings.max_attempts
            )
        if final:
            log.error(
                "dream %s of %s by %s failed after %d attempts: %s",
                work.id,
                work.observed_id,
                work.observer_id,
                work.attempts,
                error,
            )

    async def postpone(self, work: DreamClaim, delay_s: float) -> None:
        metrics.DREAMS.inc(outcome="outage")
        async with self.database.transaction() as db:
            await dreams.release(db, work, delay_s=delay_s)

    def is_outage(self, error: BaseException) -> bool:
        return isinstance(error, self.outages)


def dream_worker(
    dreamer: Dreamer,
    settings: DreamSettings,
    *,
    lease_s: float,
    outages: tuple[type[BaseException], ...],
    idle_s: float = 5.0,
    outage_pause_s: float = 15.0,
) -> QueueWorker[DreamClaim]:
    source = DreamSource(dreamer, settings, lease_s=lease_s, outages=outages)
    return QueueWorker(source, WorkerOptions(idle_s=idle_s, lease_s=lease_s, outage_pause_s=outage_pause_s))


KEEP_FINISHED_DAYS = 30  # finished dreams kept as a record (each pair's latest always)


async def schedule_dreams(database: Database, settings: DreamSettings, stop: asyncio.Event) -> None:
    """Every ``check_interval_s``, queue the dreams that are due (``dreams.schedule_due``); every hour,
    drop dreams finished more than ``KEEP_FINISHED_DAYS`` ago."""
    purged_at = 0.0
    while not stop.is_set():
        try:
            async with database.transaction() as db:
                queued = await dreams.schedule_due(
                    db, threshold=settings.min_new_conclusions, idle_s=settings.idle_s
                )
            if queued:
                log.info("queued %d scheduled dream(s)", queued)
            if time.monotonic() - purged_at > 3600:
                purged_at = time.monotonic()
                async with database.transaction() as db:
                    await dreams.purge_finished(db, older_than_days=KEEP_FINISHED_DAYS)
        except Exception as exc:  # the database may be down: try again next round
            log.warning("could not schedule dreams: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.check_interval_s)
