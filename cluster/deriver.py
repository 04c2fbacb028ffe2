"""Derivation workers: the derivation queue (storage/derivation.py) as a WorkSource for the queue worker,
run in the foreground (`rapport deriver run`, tests) or as Ray actors that `rapport serve` starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cluster.worker import DEPENDENCY_OUTAGES, QueueWorker, WorkerOptions
from models.llm import LLMConfigError, LLMOutputError, LLMUnavailable
from models.llm.client import billed_to
from pipelines.deriver import Deriver
from pipelines.dreams import Dreamer
from pipelines.webhooks import Webhooks
from rapport import metrics
from rapport.settings import DeriverSettings, LimitSettings, Settings
from storage import derivation, workers
from storage import webhooks as storage_webhooks
from storage.derivation import Claim

log = logging.getLogger(__name__)

# Errors that mean a dependency is down or misconfigured, not that the work is bad: the work waits
# (no attempt counted) until it is back. A wrong key parks nothing; it stalls until fixed, loudly.
OUTAGES: tuple[type[BaseException], ...] = (LLMUnavailable, LLMConfigError, *DEPENDENCY_OUTAGES)


class DerivationSource:
    """Claims a session's batch, derives it, and records the outcome on the queue."""

    name = "deriver"

    def __init__(
        self,
        deriver: Deriver,
        settings: DeriverSettings,
        limits: LimitSettings | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.deriver = deriver
        self.settings = settings
        self.webhooks = webhooks  # a session's queue.empty events, where its workspace has endpoints
        limits = limits or LimitSettings()
        self.per_app = limits.app_derivations
        self.caps = limits.derivation_caps
        self.database = deriver.memory.database
        # What /health learns of this process (storage/workers.py): paused (and why) while a dependency
        # is down or the LLM refuses its settings, and when a batch was last stored.
        self.paused: str | None = None
        self.refused = False  # paused by an LLM refusing its settings (only a derived batch clears it)
        self.progress_at: datetime | None = None
        self.changed = asyncio.Event()

    async def claim(self) -> Claim | None:
        # A claim's writes are each one statement (the lease, with the app's turn), unless apps are
        # capped: then an app's leases are counted under a lock held to the end of a transaction.
        capped = bool(self.per_app or self.caps)
        async with self.database.transaction() if capped else self.database.autocommit() as db:
            claimed = await derivation.claim(
                db,
                lease_s=self.settings.lease_s,
                wait_s=self.settings.batch_wait_s,
                max_tokens=self.settings.batch_max_tokens,
                per_app=self.per_app,
                caps=self.caps,
            )
        if self.paused is not None and not self.refused:
            self._resume()  # the database answers again; an LLM that refused its settings waits for a batch
        return claimed

    async def process(self, work: Claim) -> None:
        with billed_to(work.app_id, "deriver"):
            outcome = await self.deriver.derive(work)
        self.progress_at = datetime.now(UTC)
        if self.paused is not None:
            self._resume()
        log.info(
            "derived session %s (%d messages): %d new facts, %d reinforced%s",
            work.session_id,
            len(work.items),
            len(outcome.stored),
            len(outcome.reinforced),
            f", {', '.join(outcome.summaries)}" if outcome.summaries else "",
        )
        if self.webhooks is not None and self.webhooks.enabled:
            await self._record(storage_webhooks.queue_empty, work.session_id)

    async def _record(self, event_of: Any, *args: Any) -> None:
        """Queue a webhook event (read and recorded in one short transaction) and nudge its delivery:
        the endpoints themselves are never waited on here."""
        assert self.webhooks is not None
        async with self.database.transaction() as db:
            event = await event_of(db, *args)
            recorded = await self.webhooks.record(db, event) if event is not None else 0
        if recorded:
            self.webhooks.nudge(self.database)

    def _resume(self) -> None:
        log.info("the deriver works again")
        self.paused, self.refused = None, False
        self.changed.set()

    async def renew(self, work: Claim) -> bool:
        async with self.database.transaction() as db:
            return await derivation.renew(db, work, self.settings.lease_s)

    async def failed(self, work: Claim, error: BaseException) -> None:
        raw = error.raw if isinstance(error, LLMOutputError) else None
        reason = f"{type(error).__name__}: {error}"
        async with self.database.transaction() as db:
            parked = await derivation.fail(
                db,
                work,
                reason,
                raw_output=raw,
                max_attempts=self.settings.max_attempts,
            )
        if parked:
            metrics.DERIVATION_PARKED_EVENTS.inc(parked)
            if self.webhooks is not None and self.webhooks.enabled:
                await self._record(
                    storage_webhooks.derivation_parked, work.session_id, work.message_ids, reason
                )
            log.error(
                "parked %d message(s) of session %s after %d attempts: %s (`rapport deriver retry` revives them)",
                parked,
                work.session_id,
                self.settings.max_attempts,
                error,
            )

    async def postpone(self, work: Claim, delay_s: float) -> None:
        async with self.database.transaction() as db:
            await derivation.release(db, work, delay_s=delay_s)

    def is_outage(self, error: BaseException) -> bool:
        if isinstance(error, LLMConfigError):
            log.error("the deriver's LLM is misconfigured: %s", error)
        if not isinstance(error, OUTAGES):
            return False
        self.refused = isinstance(error, LLMConfigError)
        what = "the LLM refuses its settings" if self.refused else "a dependency is down"
        paused = f"{what}: {type(error).__name__}: {error}"
        if paused != self.paused:
            self.paused = paused
            self.changed.set()
        return True


def derivation_workers(
    deriver: Deriver,
    settings: DeriverSettings,
    *,
    outage_pause_s: float = 15.0,
    on_error: Callable[[BaseException], None] | None = None,
    limits: LimitSettings | None = None,
    webhooks: Webhooks | None = None,
) -> list[QueueWorker[Claim]]:
    """``settings.concurrency`` workers over one deriver (they share its models and connections).
    ``limits``: how many batches one app may have in flight over all workers (default: no cap).
    ``webhooks``: sends queue.empty when a session's work is done."""
    options = WorkerOptions(
        idle_s=settings.poll_interval_s, lease_s=settings.lease_s, outage_pause_s=outage_pause_s
    )
    source = DerivationSource(deriver, settings, limits, webhooks)
    return [QueueWorker(source, options, on_error=on_error) for _ in range(settings.concurrency)]


async def run_workers(workers: list[QueueWorker[Claim]], stop: asyncio.Event) -> None:
    """Run the workers until ``stop``, with their process's state reported for /health."""
    sources = {id(worker.source): worker.source for worker in workers}
    await asyncio.gather(
        *(worker.run(stop) for worker in workers),
        *(report_state(source, stop) for source in sources.values() if isinstance(source, DerivationSource)),
    )


async def report_state(source: DerivationSource, stop: asyncio.Event) -> None:
    """Keep this process's row of worker_status current: at once when it pauses or resumes, else every
    ``workers.HEARTBEAT_S``; gone when it stops."""
    name = f"{socket.gethostname()}/{os.getpid()}/{id(source):x}"
    while not stop.is_set():
        source.changed.clear()
        state = "paused" if source.paused else "running"
        try:
            async with source.database.autocommit() as db:
                await workers.report(db, name, "deriver", state, source.paused, source.progress_at)
        except Exception as exc:  # the database may be what is down; /health says so itself
            log.debug("could not report the deriver's state: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(source.changed.wait(), stop.wait()), timeout=workers.HEARTBEAT_S)
    with contextlib.suppress(Exception):
        async with source.database.autocommit() as db:
            await workers.retire(db, name)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def derive_until(
    settings: Settings, stop: asyncio.Event, *, embedder: Any = None, llm: Any = None
) -> None:
    """Open the stack the settings describe and derive with ``deriver.concurrency`` workers until ``stop``
    is set (`rapport deriver run`, ``DerivationActor``). ``embedder`` and ``llm`` replace the configured
    models (a Serve handle, a test double)."""
    from cluster.stack import build_deriver, open_stack

    async with open_stack(settings, embedder=embedder) as stack:
        deriver = await build_deriver(stack, llm)
        log.info("deriving with %s", deriver.llm.name)
        await background_work(deriver, settings, stop)
    log.info("deriver stopped")


async def background_work(deriver: Deriver, settings: Settings, stop: asyncio.Event) -> None:
    """What a deriver process runs until ``stop``: ``deriver.concurrency`` derivation workers, one dream
    worker (dreams are rare and each is one LLM call, with the deriver's model) and, with
    ``dream.enabled``, the scheduler that queues dreams when peers go quiet. Webhook events they raise
    are recorded and nudged; the API's processes retry what failed."""
    from cluster.dreams import dream_worker, schedule_dreams

    webhooks = Webhooks(settings.webhook)
    workers = derivation_workers(deriver, settings.deriver, limits=settings.limits, webhooks=webhooks)
    dreamer = Dreamer(deriver.memory, deriver.llm, settings.dream)
    dreaming = dream_worker(dreamer, settings.dream, lease_s=settings.deriver.lease_s, outages=OUTAGES)
    extra = [dreaming.run(stop)]
    if settings.dream.enabled:
        extra.append(schedule_dreams(deriver.memory.database, settings.dream, stop))
    try:
        await asyncio.gather(run_workers(workers, stop), *extra)
    finally:
        await webhooks.close()


class DerivationActor:
    """Derivation workers in a plain Ray actor (``ray.remote(DerivationActor)``), outside Serve: for
    batch jobs and tests. The models may be passed in (a scripted LLM, a hashing embedder); otherwise
    they are built from the settings as `rapport deriver run` builds them."""

    def __init__(self, settings: dict[str, Any], llm: Any = None, embedder: Any = None) -> None:
        metrics.export_via_ray()
        self.settings = Settings.model_validate(settings)
        self._llm = llm
        self._embedder = embedder
        self._stop = asyncio.Event()

    def pid(self) -> int:
        return os.getpid()

    async def run(self) -> None:
        """Derive until ``stop`` is called."""
        await derive_until(self.settings, self._stop, embedder=self._embedder, llm=self._llm)

    def stop(self) -> None:
        self._stop.set()
