"""The queue worker mechanism: claim work, keep its lease alive while it runs, record the outcome.

What is claimed and what is done with it comes from a ``WorkSource``; this module only schedules. A
failure of the work itself is counted against it (the source backs off and, after enough, parks it); an
outage (the model, the embedder, the index or the database out of reach) gives the work back without
counting, and the worker pauses before claiming again, so an outage never parks anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from sqlalchemy import exc as sa

from rapport import metrics
from storage.errors import UnavailableError

log = logging.getLogger(__name__)

W = TypeVar("W")

# Errors that mean the database, the index, the embedder or a socket is down rather than that the work is
# bad. Sources add their own (the deriver adds the LLM's).
DEPENDENCY_OUTAGES: tuple[type[BaseException], ...] = (
    UnavailableError,
    sa.OperationalError,
    sa.InterfaceError,
    sa.TimeoutError,
    OSError,  # the index's storage, a socket, a timeout
)
Result = Literal["done", "idle", "failed", "outage"]


class WorkSource(Protocol[W]):
    name: str

    async def claim(self) -> W | None:
        """The next piece of work, leased to this worker; None when nothing is due."""

    async def process(self, work: W) -> None:
        """Do the work and record it done (in the same transaction as its output)."""

    async def renew(self, work: W) -> bool:
        """Extend the lease; False if it was lost."""

    async def failed(self, work: W, error: BaseException) -> None:
        """Count a failed attempt (retry later, or park)."""

    async def postpone(self, work: W, delay_s: float) -> None:
        """Give the work back without counting an attempt."""

    def is_outage(self, error: BaseException) -> bool:
        """Whether ``error`` means a dependency is down rather than that this work is bad."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    idle_s: float = 1.0  # pause when nothing is due
    lease_s: float = 120.0  # renewed every lease_s / 3 while work runs
    outage_pause_s: float = 15.0  # pause (and postponement) after an outage


@dataclass
class WorkerStats:
    processed: int = 0
    failed: int = 0
    outages: int = 0


class QueueWorker(Generic[W]):
    def __init__(
        self,
        source: WorkSource[W],
        options: WorkerOptions | None = None,
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.source = source
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self._on_error = on_error

    async def run_once(self) -> Result:
        """Claim and work one piece of work, and say how it went."""
        result = await self._run_once()
        if result != "idle":
            metrics.QUEUE_WORK.inc(queue=self.source.name.replace(" ", "_"), result=result)
        return result

    async def _run_once(self) -> Result:
        try:
            work = await self.source.claim()
        except Exception as exc:
            if not self.source.is_outage(exc):
                raise
            log.warning("%s: cannot claim work (%s); pausing", self.source.name, exc)
            self.stats.outages += 1
            return "outage"
        if work is None:
            return "idle"
        renewing = asyncio.create_task(self._keep_lease(work))
        try:
            await self.source.process(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._handle(work, exc)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        self.stats.processed += 1
        return "done"

    async def _handle(self, work: W, exc: Exception) -> Result:
        if self.source.is_outage(exc):
            self.stats.outages += 1
            log.warning(
                "%s: %s is down (%s); retrying later, no attempt counted", self.source.name, work, exc
            )
            with contextlib.suppress(Exception):  # the database may be what is down: the lease expires then
                await self.source.postpone(work, self.options.outage_pause_s)
            return "outage"
        self.stats.failed += 1
        log.warning("%s: %s failed: %s: %s", self.source.name, work, type(exc).__name__, exc)
        await self.source.failed(work, exc)
        if self._on_error is not None:
            self._on_error(exc)
        return "failed"

    async def _keep_lease(self, work: W) -> None:
        while True:
            await asyncio.sleep(self.options.lease_s / 3)
            if not await self.source.renew(work):
                log.warning(
                    "%s: lost the lease on %s; its outcome will not be recorded", self.source.name, work
                )
                return

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; pause when nothing is due and after an outage."""
        log.info("%s worker running", self.source.name)
        pauses = {
            "done": 0.0,
            "failed": 0.0,
            "idle": self.options.idle_s,
            "outage": self.options.outage_pause_s,
        }
        while not stop.is_set():
            try:
                result = await self.run_once()
            except Exception:
                log.exception("%s: unexpected error in the worker loop; pausing", self.source.name)
                result = "outage"
            if pauses[result]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pauses[result])
