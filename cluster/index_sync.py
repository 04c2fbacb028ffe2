"""The index sync's background rounds: the index outbox as a WorkSource for the queue worker.

What a round does to a batch (embed, upsert, verify, delete) lives in ``pipelines/indexing.py``; this
module schedules it: claim a batch with a lease, apply it outside any transaction, record each entry's
outcome, and wait without spending attempts while the embedder, the index or the database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from cluster.worker import DEPENDENCY_OUTAGES, QueueWorker, WorkerOptions
from pipelines import health
from pipelines.indexing import IndexSync, IndexWriter
from rapport.settings import Settings, VectorStoreSettings
from storage import outbox
from storage.query import Record

log = logging.getLogger(__name__)

LEASE_S = 300.0  # a claimed entry comes back if its worker has not finished with it by then
OUTAGE_PAUSE_S = 10.0  # pause (and postponement of the batch) while a dependency is down
BACKLOG_GAUGES_S = 10.0  # how often the backlog gauges are read (Prometheus scrapes every 15-60 s)


class OutboxSource:
    """Claims a batch of due outbox entries, applies them, and records each entry's outcome."""

    name = "index sync"

    def __init__(self, sync: IndexSync, *, lease_s: float = LEASE_S, maintain_every_s: float = 60.0) -> None:
        self.sync = sync
        self.database = sync.database
        self.lease_s = lease_s
        self.maintain_every_s = maintain_every_s
        self._last_upkeep = time.monotonic()
        self.handled = 0  # entries handled (applied, or failed and counted) by the last ``process``

    async def claim(self) -> list[outbox.Entry] | None:
        # Upkeep goes before each claim, busy or idle: writes made inline (the API's, the deriver's)
        # retire their own entries and can leave this worker nothing to claim for good, while each still
        # adds a fragment. Erasures are applied inline too (``Memory.erase_user``), so is their purge.
        await self._maintain_if_due()
        await self._purge_if_due()
        async with self.database.transaction() as db:
            return await outbox.claim(db, self.sync.batch_size, lease_s=self.lease_s) or None

    async def process(self, work: list[outbox.Entry]) -> None:
        applied, failures = await self.sync.apply_isolating_failures(work)
        async with self.database.transaction() as db:
            await outbox.done(db, [e.id for e in applied])
            for entry, error in failures:
                last = entry.attempts + 1 >= self.sync.max_attempts
                log.log(logging.ERROR if last else logging.WARNING,
                        "index entry %s (%s %s %s) failed%s: %s", entry.id, entry.action, entry.kind,
                        entry.target_id or entry.scope, "; parked" if last else "", error)  # fmt: skip
                await outbox.failed(db, [entry.id], error, max_attempts=self.sync.max_attempts)
        self.handled = len(work)

    async def renew(self, work: list[outbox.Entry]) -> bool:
        await self.postpone(work, self.lease_s)
        return True

    async def failed(self, work: list[outbox.Entry], error: BaseException) -> None:
        log.error("index sync: a batch of %d entries failed: %s: %s", len(work), type(error).__name__, error)
        async with self.database.transaction() as db:
            await outbox.failed(
                db,
                [e.id for e in work],
                f"{type(error).__name__}: {error}",
                max_attempts=self.sync.max_attempts,
            )
        self.handled = len(work)

    async def postpone(self, work: list[outbox.Entry], delay_s: float) -> None:
        async with self.database.transaction() as db:
            await outbox.release(db, [e.id for e in work], delay_s=delay_s)
        self.handled = len(work)

    def is_outage(self, error: BaseException) -> bool:
        return isinstance(error, DEPENDENCY_OUTAGES)

    async def _maintain_if_due(self) -> None:
        """Compact and index every ``maintain_every_s``, or sooner once a table has taken many writes
        (``IndexSync.compaction_due``), between this worker's rounds."""
        if time.monotonic() - self._last_upkeep < self.maintain_every_s and not self.sync.compaction_due():
            return
        self._last_upkeep = time.monotonic()
        try:
            report = await self.sync.maintain()
        except Exception:
            # Compaction only makes reads faster; the rows are written. It is tried again next time.
            log.exception("index upkeep failed; retrying in %.0fs", self.maintain_every_s)
            return
        if report is not None:
            log.info("index upkeep: %s", report)

    async def _purge_if_due(self) -> None:
        """Take erased rows out of the index files (``IndexSync.purge``) when a step of it is due."""
        if not self.sync.purge_due():
            return
        report = await self.sync.purge()  # a table whose purge fails is logged, and retried later
        if report is not None:
            log.info("index purge of erased rows: %s", report)


def index_sync_worker(
    sync: IndexSync, settings: VectorStoreSettings | None = None
) -> QueueWorker[list[outbox.Entry]]:
    """The single worker that applies the outbox (the index has one writer, so never more than one)."""
    interval_s = settings.sync_interval_s if settings else 0.5
    maintain_every_s = settings.maintain_interval_s if settings else 60.0
    source = OutboxSource(sync, maintain_every_s=maintain_every_s)
    options = WorkerOptions(idle_s=interval_s, lease_s=LEASE_S, outage_pause_s=OUTAGE_PAUSE_S)
    return QueueWorker(source, options)


async def drain(sync: IndexSync | IndexWriter) -> int:
    """Apply one batch of due entries now; returns how many were handled (applied, failed and counted,
    or given back during an outage). For tests and one-off catch-ups, with this process's writer."""
    assert isinstance(sync, IndexSync), "drain works the outbox with an in-process IndexSync"
    worker = index_sync_worker(sync)
    source: OutboxSource = worker.source  # type: ignore[assignment]
    source.handled = 0
    await worker.run_once()
    return source.handled


class IndexSyncLoop:
    """The outbox applied in the background of this process's event loop, until stopped. Beside it, the
    backlog gauges (rapport/metrics.py) are read from the database every ``BACKLOG_GAUGES_S``: this loop
    runs once per deployment, so they are set in one place."""

    def __init__(
        self, sync: IndexSync, settings: VectorStoreSettings, *, service: Settings | None = None
    ) -> None:
        """``service``: the whole service's settings, for the health gauges of derivation too."""
        self.worker = index_sync_worker(sync, settings)
        self.database = sync.database
        self.service = service
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None

    def start(self) -> IndexSyncLoop:
        self._task = asyncio.create_task(self.worker.run(self._stop))
        self._gauges = asyncio.create_task(self._observe_backlogs())
        return self

    async def _observe_backlogs(self) -> None:
        while not self._stop.is_set():
            try:
                await health.observe(self.database, self.service)
            except Exception as exc:  # the database is down: /health says so; the gauges keep their value
                log.warning("could not read the backlogs for the metrics: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=BACKLOG_GAUGES_S)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, timeout_s: float = 30) -> None:
        """Let the round in progress finish (at most ``timeout_s``), then stop."""
        self._stop.set()
        for task in (self._task, self._gauges):
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=timeout_s)


class RemoteIndexWriter:
    """The IndexWriter interface over a Ray handle to a writer: the IndexWriter deployment
    (deployments/indexer.py) or a batch job's own (cluster/batch.py, JobIndexWriter)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def write_documents(
        self, rows: Sequence[Record], vectors: np.ndarray, outbox_ids: Sequence[int]
    ) -> None:
        plain = [dict(row._mapping) for row in rows]
        await self._handle.write_documents.remote(plain, vectors, list(outbox_ids))

    async def apply(self, outbox_ids: Sequence[int]) -> None:
        await self._handle.apply.remote(list(outbox_ids))
