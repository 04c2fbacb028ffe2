"""Batch re-derivation on Ray (`rapport derive`): a driver, a pool of actors, and the ledger between them.

Ray actors, not Ray Data: the ledger in PostgreSQL is the queue. Each actor claims the job's next
pending users a page at a time (``FOR UPDATE SKIP LOCKED``), derives ``concurrency`` users at once with
at most ``concurrency`` LLM calls in flight, and commits each user's facts with its ``done`` mark. The
driver only starts actors, replaces dead ones, shows progress and heartbeats: no user id passes through
it, so its memory does not grow with the job (docs/benchmarks.md). Ray Data's ``read_sql`` would read
the same ledger without a snapshot and still need it for exactly-once writes; its retries are
per block, not per user.

What happens when something dies:
- an actor: its users are pending again (or failed, once claimed ``max_attempts`` times) and another
  actor is started; a user whose facts were committed is done and never derived again;
- the driver: the actors (owned by it) die with it; the job stays ``running`` with a stale heartbeat
  and `rapport derive --resume JOB` takes it over after HEARTBEAT_STALE_S;
- an LLM outage: the user goes back without an attempt counted and the actor pauses;
- a misconfigured LLM (a wrong key, an unknown model): the job stops with that error, every user not
  done still pending, to be resumed once the setting is fixed.

The index keeps its single writer: actors hand vectors to the Serve ``IndexWriter`` when `rapport
serve` runs on the cluster, else to one ``JobIndexWriter`` actor the driver starts for the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from cluster.deriver import OUTAGES
from cluster.index_sync import RemoteIndexWriter
from models.llm import LLMConfigError
from rapport import metrics
from rapport.settings import Settings
from storage import derivation, jobs
from storage.jobs import Claimed, Mode, Progress, UserLost

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunOptions:
    actors: int = 1
    concurrency: int = 4  # LLM calls (and users) in flight per actor
    actor_cpus: float = 0.5
    actor_gpus: float | None = None  # unset: the cluster's GPUs shared among the actors, at most one each
    poll_s: float = 1.0  # the driver's heartbeat and progress interval
    stop_grace_s: float = 10.0  # how long stopping actors may finish their users before they are killed
    lease_s: float = 600.0  # the users' sessions' leases, renewed every lease_s / 3
    max_actor_deaths: int | None = None  # unset: 3 per actor, then the job stops


@dataclass
class Report:
    job_id: str
    state: str
    progress: Progress
    elapsed_s: float
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    actor_deaths: int = 0


class JobFailed(RuntimeError):
    """The actors cannot work (a misconfigured model, an error on start): the job is stopped, resumable."""


# --- the actors --------------------------------------------------------------------------------------------


class RederiveActor:
    """Derives a job's users until none is pending (``ray.remote(RederiveActor)``)."""

    def __init__(
        self,
        settings: dict[str, Any],
        job_id: str,
        owner: str,
        *,
        concurrency: int,
        lease_s: float,
        llm: Any = None,
        embedder: Any = None,
        writer: Any = None,
    ) -> None:
        self.settings = Settings.model_validate(settings)
        # Enough connections for the users in flight, the claims and the lease renewal, no more: many
        # actors share one PostgreSQL.
        self.settings.db.pool_size = min(self.settings.db.pool_size, concurrency + 3)
        self.job_id = job_id
        self.owner = owner
        self.concurrency = concurrency
        self.lease_s = lease_s
        self._llm = llm
        self._embedder = embedder
        self._writer = writer
        self._stopping = False
        self._misconfigured: BaseException | None = None
        self.done = 0
        self.failed = 0

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        """Start no more users; those in progress finish."""
        self._stopping = True

    async def run(self) -> dict[str, int]:
        """Claim and derive the job's users until none is pending (or ``stop``)."""
        async with self.opened() as (rederiver, job):
            queue: asyncio.Queue[Claimed | None] = asyncio.Queue(maxsize=self.concurrency)
            workers = [
                asyncio.create_task(self._work(queue, rederiver, job.app_id, job.mode))
                for _ in range(self.concurrency)
            ]
            try:
                await self._feed(queue)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
        if self._misconfigured is not None:
            raise self._misconfigured  # the driver stops the job with it (resumable once fixed)
        return {"done": self.done, "failed": self.failed}

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[Any, jobs.Job]]:
        """The models, stores and writers this actor derives with, the group committer and the lease
        renewal running: (the Rederiver, the job)."""
        from cluster.stack import build_deriver, open_stack
        from pipelines.deriver.rederive import Rederiver
        from rapport.logs import configure_logging

        configure_logging(self.settings.app.log_level)
        metrics.export_via_ray()
        writer = BufferedIndexWriter(RemoteIndexWriter(self._writer)) if self._writer is not None else None
        async with AsyncExitStack() as resources:
            if writer is not None:
                resources.push_async_callback(writer.close)
            stack = await resources.enter_async_context(
                open_stack(self.settings, embedder=self._embedder, writer=writer)
            )
            self.database = stack.database
            deriver = await build_deriver(stack, self._llm)
            rederiver = Rederiver(
                deriver,
                batch_max_tokens=self.settings.deriver.batch_max_tokens,
                llm_slots=asyncio.Semaphore(self.concurrency),
            )
            job = await self._job()
            self._commits = GroupCommit(lambda group: rederiver.store(group, mode=job.mode))
            resources.push_async_callback(self._commits.close)
            renewal = asyncio.create_task(self._renew_leases())
            resources.callback(renewal.cancel)
            yield rederiver, job

    async def _job(self) -> jobs.Job:
        async with self.database.transaction() as db:
            return await jobs.get_job(db, self.job_id)

    async def _feed(self, queue: asyncio.Queue[Claimed | None]) -> None:
        """Claim pages of users as the workers take them, until none is pending or the actor stops."""
        while not self._stopping:
            async with self.database.transaction() as db:
                claimed = await jobs.claim_users(db, self.job_id, self.owner, self.concurrency)
            if not claimed:
                return
            for i, user in enumerate(claimed):
                if self._stopping:
                    await self._release([c.n for c in claimed[i:]])
                    return
                await queue.put(user)

    async def _work(
        self, queue: asyncio.Queue[Claimed | None], rederiver: Any, app_id: str, mode: Mode
    ) -> None:
        while (user := await queue.get()) is not None:
            if self._stopping:
                await self._release([user.n])
                continue
            await self._derive(rederiver, app_id, mode, user)

    async def _derive(self, rederiver: Any, app_id: str, mode: Mode, user: Claimed) -> None:
        from pipelines.deriver.rederive import LedgerEntry

        entry = LedgerEntry(self.job_id, user.n, self.owner)
        try:
            await self._lease(user.user_id)
            facts = await rederiver.derive(app_id, user.user_id)
            await self._commits.submit(facts, entry)
            self.done += 1
        except UserLost as exc:
            log.warning("user %s: %s; leaving it to its new owner", user.user_id, exc)
            await self._release_sessions(user.user_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Whatever else failed the user counts an attempt: a provider refusing its request, or
            # LeaseLost (a queue worker holds a session started during the job), so that a user whose
            # sessions are always busy fails in the end instead of hanging the job.
            await self._release_sessions(user.user_id)
            if isinstance(exc, LLMConfigError):
                # A wrong key or model: no user can be derived until an operator fixes the setting, so
                # the job stops (rather than wait forever) with the error, and every user stays pending.
                log.error("user %s: the LLM is misconfigured (%s); stopping", user.user_id, exc)
                await self._release([user.n])
                self._misconfigured = self._misconfigured or exc
                self._stopping = True
                return
            if isinstance(exc, OUTAGES):
                log.warning("user %s waits: a dependency is down (%s)", user.user_id, exc)
                await self._release([user.n])
                await asyncio.sleep(15.0)
                return
            async with self.database.transaction() as db:
                state = await jobs.fail_user(
                    db,
                    self.job_id,
                    user.n,
                    self.owner,
                    f"{type(exc).__name__}: {exc}",
                    max_attempts=self.settings.deriver.max_attempts,
                )
            self.failed += state == "failed"
            log.log(
                logging.ERROR if state == "failed" else logging.WARNING,
                "user %s %s after attempt %d: %s",
                user.user_id,
                "failed" if state == "failed" else "will be retried",
                user.attempts,
                exc,
            )

    async def _lease(self, user_id: str) -> None:
        """Hold the user's sessions against the continuous deriver, waiting out a batch it is on."""
        deadline = time.monotonic() + self.lease_s
        while True:
            async with self.database.transaction() as db:
                if await derivation.lease_user(db, user_id, self.owner, lease_s=self.lease_s):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the continuous deriver held a session of the user for {self.lease_s:.0f}s"
                )
            await asyncio.sleep(1.0)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                async with self.database.transaction() as db:
                    await derivation.renew_owner(db, self.owner, lease_s=self.lease_s)
            except Exception:
                log.exception("renewing the leases of job %s failed; retrying", self.job_id)

    async def _release(self, ns: list[int]) -> None:
        async with self.database.transaction() as db:
            await jobs.release_users(db, self.job_id, self.owner, ns)

    async def _release_sessions(self, user_id: str) -> None:
        try:
            async with self.database.transaction() as db:
                await derivation.release_user(db, user_id, self.owner)
        except Exception:
            log.exception("releasing the sessions of user %s failed; their lease will expire", user_id)


class GroupCommit:
    """Stores users as they finish, a group per transaction: while one group commits the next gathers,
    so a busy actor writes many users per transaction and an idle one waits for nobody. A group that
    fails is retried one user at a time, so one user lost to another actor cannot sink the others."""

    def __init__(self, store: Callable[[list[Any]], Awaitable[list[int]]], *, max_group: int = 64) -> None:
        self.store = store
        self.max_group = max_group
        self._waiting: list[tuple[Any, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, facts: Any, entry: Any) -> int:
        """Store one user's facts with its done mark; the number of facts stored (or the error)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(((facts, entry), future))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._commit_forever())
        return await future

    async def _commit_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                group, self._waiting = self._waiting[: self.max_group], self._waiting[self.max_group :]
                await self._commit(group)

    async def _commit(self, group: list[tuple[Any, asyncio.Future[int]]]) -> None:
        try:
            counts = await self.store([item for item, _ in group])
        except Exception as exc:
            if len(group) == 1:
                if not group[0][1].done():
                    group[0][1].set_exception(exc)
                return
            for one in group:
                await self._commit([one])
            return
        for (_, future), count in zip(group, counts, strict=True):
            if not future.done():
                future.set_result(count)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class BufferedIndexWriter:
    """An actor's side of the index writer: facts and removals are collected and handed over in batches
    (every ``interval_s`` or ``max_rows``), so the single writer makes a few large LanceDB writes instead
    of one per user. The outbox entries are committed already: a batch lost with its actor is applied
    by the index sync later."""

    def __init__(self, writer: Any, *, interval_s: float = 2.0, max_rows: int = 4096) -> None:
        self.writer = writer
        self.interval_s = interval_s
        self.max_rows = max_rows
        self._rows: list[Any] = []
        self._vectors: list[np.ndarray] = []
        self._entries: list[int] = []
        self._removals: list[int] = []
        self._full = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    async def write_documents(self, rows: Any, vectors: np.ndarray, outbox_ids: Any) -> None:
        self._rows.extend(rows)
        self._vectors.append(vectors)
        self._entries.extend(outbox_ids)
        self._started()
        if len(self._rows) >= self.max_rows:
            self._full.set()

    async def apply(self, outbox_ids: Any) -> None:
        self._removals.extend(outbox_ids)
        self._started()

    def _started(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        self._full.clear()
        rows, vectors, entries, removals = self._rows, self._vectors, self._entries, self._removals
        self._rows, self._vectors, self._entries, self._removals = [], [], [], []
        try:
            if rows:
                await self.writer.write_documents(rows, np.concatenate(vectors), entries)
            if removals:
                await self.writer.apply(removals)
        except Exception:
            log.exception(
                "handing %d facts to the index writer failed; the index sync will apply them", len(rows)
            )

    async def close(self) -> None:
        """Hand over everything collected, then return. A flush under way is waited for, not cancelled:
        its rows are no longer in the buffers, and a cancelled hand-over would leave them to the index
        sync, so the index would lag behind a job reported done."""
        if self._flusher is not None:
            self._closing = True
            self._full.set()  # wake the flusher: it ends after the flush it is in, or one more
            await self._flusher
        await self.flush()


class JobIndexWriter:
    """The index's single writer for a job when `rapport serve` is not running: the IndexWriter
    deployment's interface in a plain actor, applying the outbox in the background meanwhile."""

    def __init__(self, settings: dict[str, Any], embedder: Any = None) -> None:
        metrics.export_via_ray()
        self.settings = Settings.model_validate(settings)
        self._embedder = embedder
        self._resources = AsyncExitStack()
        self._stack: Any = None
        self._opening = asyncio.Lock()

    async def _sync(self) -> Any:
        async with self._opening:
            if self._stack is None:
                from cluster.stack import open_stack

                self._stack = await self._resources.enter_async_context(
                    open_stack(self.settings, embedder=self._embedder, run_index_sync=True)
                )
        return self._stack.sync

    async def ready(self) -> bool:
        await self._sync()
        return True

    async def write_documents(
        self, rows: list[dict[str, Any]], vectors: np.ndarray, outbox_ids: list[int]
    ) -> None:
        sync = await self._sync()
        from pipelines.indexing import StoredDocument

        await sync.write_documents([StoredDocument.of(row) for row in rows], vectors, outbox_ids)

    async def apply(self, outbox_ids: list[int]) -> None:
        sync = await self._sync()
        await sync.apply(outbox_ids)

    async def close(self) -> None:
        await self._resources.aclose()


def serve_index_writer() -> Any | None:
    """A handle to `rapport serve`'s IndexWriter if it runs on this Ray cluster."""
    from ray import serve

    from cluster import SERVE_APP as APP_NAME

    application = serve.status().applications.get(APP_NAME)
    if application is None or "IndexWriter" not in application.deployments:
        return None
    return serve.get_deployment_handle("IndexWriter", app_name=APP_NAME)


# --- the job ----------------------------------------------------------------------------------------------

USERS_PAGE = 10_000  # user ids read from a --users file per statement


class BadSelection(ValueError):
    """The users asked for are not (all) users of the app."""


async def create_job(
    database: Any,
    settings: Settings,
    app: str,
    *,
    mode: Mode,
    users_file: str | None = None,
    since: datetime | None = None,
    options: RunOptions,
) -> tuple[str, int]:
    """Record a job over the app's users (all of them, those active ``since``, or the ids in
    ``users_file``, one per line) and return its id and size. ``app`` is an app's id or name. Nothing is
    recorded if a listed id is not a user of the app (``BadSelection`` names some)."""
    from models.llm import llm_name
    from storage import apps
    from storage.errors import NotFoundError

    selection: dict[str, Any] = {"users_file": users_file} if users_file else {"all": True}
    if since is not None:
        selection["since"] = since.isoformat()
    async with database.transaction() as db:
        try:
            app_row = await apps.get_app(db, app)
        except NotFoundError:
            app_row = await apps.get_app_by_name(db, app)
        job_id = await jobs.create_job(
            db,
            app_row.id,
            mode=mode,
            selection=selection,
            settings={"actors": options.actors, "concurrency": options.concurrency},
            model=llm_name(settings.llm_for("deriver")),
        )
        if users_file is None:
            total = await jobs.add_all_users(db, job_id, app_row.id, since=since)
        else:
            unknown: list[str] = []
            added = 0
            # A local file, read a page at a time between statements: blocking the loop briefly is fine.
            with open(users_file, encoding="utf-8") as lines:  # noqa: ASYNC230
                page: list[str] = []
                for line in lines:
                    if line.strip():
                        page.append(line.strip())
                    if len(page) == USERS_PAGE:
                        unknown += await jobs.add_users(db, job_id, app_row.id, page, start=added)
                        added += len(page)
                        page = []
                unknown += await jobs.add_users(db, job_id, app_row.id, page, start=added)
            if unknown:
                raise BadSelection(
                    f"{len(unknown)} id(s) in {users_file} are not users of app {app_row.name!r}: "
                    + ", ".join(unknown[:5])
                    + (" ..." if len(unknown) > 5 else "")
                )
            total = await jobs.seal_users(db, job_id)
    return job_id, total


# --- the driver --------------------------------------------------------------------------------------------


async def drive(
    settings: Settings,
    job_id: str,
    options: RunOptions,
    *,
    llm: Any = None,
    embedder: Any = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Report:
    """Run (or resume) a job to its end on the connected Ray: every user done or failed, or the job
    cancelled (`rapport jobs cancel`), or ``stop`` set (the job is then ``stopped``, resumable)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from storage.db import open_database

    started = time.monotonic()
    stop = stop or asyncio.Event()
    database = await open_database(settings)
    plain = settings.model_dump(mode="json")
    actors: dict[str, tuple[Any, Any]] = {}  # owner -> (handle, the run() ref)
    job_writer: Any = None
    deaths = 0
    max_deaths = options.max_actor_deaths if options.max_actor_deaths is not None else 3 * options.actors
    gpus = options.actor_gpus
    if gpus is None:
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        gpus = min(1.0, cluster_gpus / options.actors) if cluster_gpus else 0.0

    async def ledger(work: Callable[[Any], Any]) -> Any:
        async with database.transaction() as db:
            return await work(db)

    try:
        total = (await ledger(lambda db: jobs.get_job(db, job_id))).users_total
        # Counting the ledger reads every user's row: once a second for small jobs, every 10 s at a
        # million users, every 30 s beyond (the heartbeat stays at poll_s).
        count_every_s = max(options.poll_s, min(30.0, total / 100_000))
        counted_at = -count_every_s
        writer = serve_index_writer()
        if writer is None:
            writer_actor: Any = ray.remote(JobIndexWriter)
            job_writer = writer_actor.options(num_cpus=0).remote(plain, embedder)
            await job_writer.ready.remote()
            writer = job_writer
            log.info("job %s: the job's own index writer applies its facts", job_id)
        else:
            log.info("job %s: `rapport serve`'s IndexWriter applies its facts", job_id)

        def spawn() -> None:
            owner = f"job:{job_id}:{os.urandom(6).hex()}"
            actor_class: Any = ray.remote(RederiveActor)
            # Named after its owner token, so an operator (or a test) can find the actor holding a user.
            named = actor_class.options(
                name=owner, num_cpus=options.actor_cpus, num_gpus=gpus, max_restarts=0
            )
            handle = named.remote(
                plain,
                job_id,
                owner,
                concurrency=options.concurrency,
                lease_s=options.lease_s,
                llm=llm,
                embedder=embedder,
                writer=writer,
            )
            actors[owner] = (handle, handle.run.remote())

        for _ in range(options.actors):
            spawn()
        stopping = False
        while True:
            state = await ledger(lambda db: jobs.heartbeat(db, job_id))
            if on_progress is not None and time.monotonic() - counted_at >= count_every_s:
                counted_at = time.monotonic()
                on_progress(await ledger(lambda db: jobs.progress(db, job_id)))
            if (state == "cancelling" or stop.is_set()) and not stopping:
                stopping = True
                for handle, _ in actors.values():
                    handle.stop.remote()
                stopping_since = time.monotonic()
            refs = {ref: owner for owner, (_, ref) in actors.items()}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
            for ref in ready:
                owner = refs[ref]
                del actors[owner]
                try:
                    ray.get(ref)
                except RayActorError as exc:  # the process died: its users go back
                    deaths += 1
                    async with database.transaction() as db:
                        held = await jobs.give_up_owner(
                            db,
                            job_id,
                            owner,
                            max_attempts=settings.deriver.max_attempts,
                            reason="the actor deriving it died each time (out of memory?)",
                        )
                    log.warning(
                        "job %s: an actor died holding %d users; they go back (%s)", job_id, held, exc
                    )
                    if deaths > max_deaths:
                        raise JobFailed(
                            f"{deaths} actors died; the job is stopped (resume it with --resume)"
                        ) from exc
                    if not stopping:
                        spawn()
                except RayTaskError as exc:  # it could not work at all: a missing model, a wrong key
                    raise JobFailed(
                        f"an actor failed: {exc.cause if exc.cause else exc}\n"
                        f"the job is stopped; once that is fixed: rapport derive --resume {job_id}"
                    ) from exc
            if stopping and actors and time.monotonic() - stopping_since > options.stop_grace_s:
                for handle, _ in actors.values():
                    ray.kill(handle)
                actors.clear()
            if not actors:
                progress = await ledger(lambda db: jobs.progress(db, job_id))
                if stopping or (progress.pending == 0 and progress.running == 0):
                    break
                for _ in range(min(options.actors, progress.pending)):
                    spawn()  # users given back after every actor had finished
                continue
            await asyncio.sleep(options.poll_s)

        await ledger(lambda db: jobs.release_all(db, job_id))
        final = "done" if not stopping else ("cancelled" if state == "cancelling" else "stopped")
        await ledger(lambda db: jobs.set_state(db, job_id, final))
        progress = await ledger(lambda db: jobs.progress(db, job_id))
        if on_progress is not None:
            on_progress(progress)
        failures = await ledger(lambda db: jobs.failures(db, job_id))
        return Report(job_id, final, progress, time.monotonic() - started, failures, deaths)
    except BaseException:
        for handle, _ in actors.values():
            ray.kill(handle)
        try:
            await ledger(lambda db: jobs.release_all(db, job_id))
            await ledger(lambda db: jobs.set_state(db, job_id, "stopped"))
        except Exception:
            log.exception(
                "could not record job %s as stopped; `--resume` still works after the heartbeat expires",
                job_id,
            )
        raise
    finally:
        if job_writer is not None:
            try:
                await job_writer.close.remote()
            finally:
                ray.kill(job_writer)
        await database.dispose()
