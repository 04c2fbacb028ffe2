"""The `rapport` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from rapport.logs import configure_logging
from rapport.settings import Settings, get_settings, mask_url_password

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("rapport")
T = TypeVar("T")

app = typer.Typer(
    help="Rapport: memory and user models for LLM apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(help="API keys (JWTs signed with AUTH_JWT_SECRET).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
deriver_app = typer.Typer(
    help="The deriver: what waits to be derived, parked work, and a foreground worker.", no_args_is_help=True
)
app.add_typer(deriver_app, name="deriver")
jobs_app = typer.Typer(help="Batch re-derivation jobs (`rapport derive`).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
apps_app = typer.Typer(help="Apps: erase one with everything in it.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")
users_app = typer.Typer(help="Users: erase one with everything of theirs.", no_args_is_help=True)
app.add_typer(users_app, name="users")
index_app = typer.Typer(
    help="The search index's outbox: what waits, what failed for good.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the bad key and value
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.app.log_level)
    return settings


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run an async command body; a domain error (unknown id...) is a message and exit code 1."""
    import asyncio

    from storage.errors import StorageError

    try:
        return asyncio.run(coroutine)
    except StorageError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc


def _database_url(settings: Settings) -> str:
    from storage.db import resolve_database_url

    try:
        return resolve_database_url(settings)
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("config")
def show_config() -> None:
    """Print the effective settings as JSON, secrets masked."""
    typer.echo(json.dumps(_settings().redacted(), indent=2))


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create or upgrade the schema (starts the embedded Postgres if no DB_CONNECTION_URI is set)."""
    from storage import migrate

    settings = _settings()
    url = _database_url(settings)
    migrate.upgrade(url, revision)
    typer.echo(f"database {mask_url_password(url)} is at revision {migrate.current_revision(url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help='Target revision; "base" removes every table.'),
) -> None:
    """Take the schema back to an older revision."""
    from storage import migrate

    url = _database_url(_settings())
    migrate.downgrade(url, revision)
    typer.echo(f"database is at revision {migrate.current_revision(url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the newest one this code knows."""
    from storage import migrate

    url = _database_url(_settings())
    typer.echo(f"current: {migrate.current_revision(url) or 'base (empty)'}; head: {migrate.head_revision()}")


@keys_app.command("create")
def keys_create(
    admin: bool = typer.Option(False, "--admin", help="An admin key: full access, may mint other keys."),
    app_id: str | None = typer.Option(None, help="Scope the key to this app."),
    user_id: str | None = typer.Option(None, help="Scope the key to this user."),
    session_id: str | None = typer.Option(None, help="Scope the key to this session."),
    collection_id: str | None = typer.Option(None, help="Scope the key to this collection."),
    expires_in: int | None = typer.Option(
        None, min=1, help="Seconds until the key expires [default: never]."
    ),
) -> None:
    """Print a new API key. `rapport keys create --admin` bootstraps the first one."""
    from datetime import UTC, datetime, timedelta

    from deployments.api.auth import mint_key
    from storage.db import Database
    from storage.scopes import Scope, resolve_scope

    settings = _settings()
    if settings.auth.jwt_secret is None:
        typer.echo("error: set AUTH_JWT_SECRET (and AUTH_USE_AUTH=true) before creating keys", err=True)
        raise typer.Exit(2)
    scoped = any((app_id, user_id, session_id, collection_id))
    if admin == scoped:
        typer.echo(
            "error: give either --admin or at least one of --app-id/--user-id/--session-id/--collection-id",
            err=True,
        )
        raise typer.Exit(2)
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None

    scope: Scope | None = None
    if scoped:

        async def lookup() -> Scope:
            database = Database(_database_url(settings), settings.db)
            try:
                async with database.transaction() as db:
                    return await resolve_scope(
                        db, app_id=app_id, user_id=user_id, session_id=session_id, collection_id=collection_id
                    )
            finally:
                await database.dispose()

        scope = _run(lookup())
    typer.echo(mint_key(settings.auth.jwt_secret.get_secret_value(), scope, expires_at=expires_at))


async def _in_transaction(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    from storage.db import open_database

    database = await open_database(settings)
    try:
        async with database.transaction() as db:
            return await work(db)
    finally:
        await database.dispose()


@index_app.command("status")
def index_status() -> None:
    """How far the index is behind PostgreSQL (as in /health), and why parked entries failed."""
    from storage import outbox

    async def status(db: AsyncConnection) -> tuple[outbox.Lag, list[tuple[str, int]]]:
        return await outbox.lag(db), await outbox.parked_reasons(db, limit=10)

    lag, reasons = _run(_in_transaction(_settings(), status))
    typer.echo(f"pending: {lag.pending} (oldest {lag.oldest_s:.1f}s)  parked: {lag.parked}")
    for error, count in reasons:
        typer.echo(f"  {count} parked: {error}")


@index_app.command("unpark")
def index_unpark() -> None:
    """Retry every parked entry (after fixing what made it fail), with a fresh set of attempts."""
    from storage import outbox

    count = _run(_in_transaction(_settings(), outbox.unpark))
    typer.echo(f"{count} parked entries will be retried")


@deriver_app.command("status")
def deriver_status(
    app_id: str | None = typer.Option(None, "--app", help="Only this app's messages."),
) -> None:
    """Messages pending, in progress, retrying, parked and done (as GET .../deriver/status), and why
    parked ones failed."""
    from storage import derivation

    async def status(db: AsyncConnection) -> tuple[derivation.Counts, list[tuple[str, int]]]:
        return await derivation.counts(db, app_id=app_id), await derivation.parked_reasons(db, app_id=app_id)

    counts, reasons = _run(_in_transaction(_settings(), status))
    typer.echo(
        f"pending: {counts.pending}  in progress: {counts.in_progress}  retrying: {counts.retrying}  "
        f"parked: {counts.parked}  done: {counts.done}  oldest waiting: {counts.oldest_pending_s:.1f}s"
    )
    for error, count in reasons:
        typer.echo(f"  {count} parked: {error}")


@deriver_app.command("retry")
def deriver_retry(app_id: str | None = typer.Option(None, "--app", help="Only this app's messages.")) -> None:
    """Queue parked messages again with a fresh set of attempts (after fixing what made them fail)."""
    from storage import derivation

    count = _run(_in_transaction(_settings(), lambda db: derivation.retry_parked(db, app_id=app_id)))
    typer.echo(f"{count} parked messages will be derived again")


@app.command("dream")
def dream(
    workspace: str = typer.Argument(..., help="The workspace (app) by name: every peer in it dreams."),
    queue_only: bool = typer.Option(
        False, "--queue-only", help="Only queue the dreams; the running service's workers take them."
    ),
) -> None:
    """A dream for every (observer, peer) pair of a workspace that holds conclusions: near-duplicates
    merged, contradictions superseded, deductions written, cards refreshed. Queued, then worked here with
    the deriver's model (as many as `rapport serve`'s workers do not take first), with a progress bar."""
    import asyncio

    from tqdm import tqdm

    from cluster.deriver import OUTAGES
    from cluster.dreams import DreamSource
    from cluster.stack import build_deriver, open_stack
    from cluster.worker import QueueWorker, WorkerOptions
    from pipelines.dreams import Dreamer
    from storage import dreams
    from storage.workspaces import workspace as workspace_named

    settings = _settings()

    async def queue(db: AsyncConnection) -> tuple[str, int, int]:
        app = await workspace_named(db, workspace)
        pairs = await dreams.pairs_of_app(db, app.id)
        queued = 0
        for observer, observed in pairs:
            queued += await dreams.request(db, app.id, observer, observed, reason="batch")
        return app.id, len(pairs), queued

    app_id, total, queued = _run(_in_transaction(settings, queue))
    typer.echo(
        f"{total} pairs in {workspace}: {queued} dreams queued ({total - queued} already queued or running)"
    )
    if queue_only or total == 0:
        return

    async def work() -> dict[str, int]:
        async with open_stack(settings) as stack:
            deriver = await build_deriver(stack, None)
            dreamer = Dreamer(deriver.memory, deriver.llm, settings.dream)
            source = DreamSource(dreamer, settings.dream, lease_s=settings.deriver.lease_s, outages=OUTAGES)
            worker = QueueWorker(source, WorkerOptions(lease_s=settings.deriver.lease_s))
            bar = tqdm(total=total, desc="dreaming", unit="pair", dynamic_ncols=True)
            try:
                while True:
                    async with deriver.memory.database.transaction() as db:
                        counts = await dreams.counts(db, app_id)
                    bar.n = total - counts["pending"] - counts["running"]
                    bar.refresh()
                    if counts["pending"] + counts["running"] == 0:
                        return counts
                    if await worker.run_once() in ("idle", "outage"):
                        await asyncio.sleep(2.0)  # another worker has it, or a retry waits its backoff
            finally:
                bar.close()

    failed_before = _run(_in_transaction(settings, lambda db: dreams.counts(db, app_id)))["failed"]
    counts = _run(work())
    failed = counts["failed"] - failed_before
    typer.echo(
        f"dreams of {workspace}: {counts['done']} done, {failed} failed now (`rapport dream` again retries)"
    )
    if failed:
        raise typer.Exit(1)


@deriver_app.command("run")
def deriver_run(
    metrics_port: int | None = typer.Option(
        None, help="Serve this process's metrics for Prometheus on this port (/metrics)."
    ),
) -> None:
    """Derive in the foreground (no API, no Ray) until Ctrl-C: deriver.concurrency batches at a time,
    with the models the settings name. Any number may run beside `rapport serve`'s workers."""
    import asyncio
    import signal

    from cluster.deriver import derive_until

    settings = _settings()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
        log.info("metrics for Prometheus on http://0.0.0.0:%d/metrics", metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await derive_until(settings, stop)

    from models.embedding import EmbeddingModelNotFound
    from models.llm import LLMError

    try:
        _run(run())
    except (LLMError, EmbeddingModelNotFound) as exc:  # a missing model or key: the message names the setting
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _resolved(settings: Settings) -> Settings:
    """The settings with the database URL resolved (the embedded Postgres started) and an absolute home,
    as Ray actors on other processes or hosts need them."""
    url = _database_url(settings)
    return settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"connection_uri": url}),
            "app": settings.app.model_copy(update={"home": settings.home}),
        }
    )


@app.command("derive")
def derive(
    app_ref: str | None = typer.Option(None, "--app", help="The app (id or name) whose users to derive."),
    all_users: bool = typer.Option(False, "--all", help="Every user of the app."),
    users_file: Path | None = typer.Option(
        None, "--users", exists=True, dir_okay=False, help="A file of user ids, one per line."
    ),
    since: datetime | None = typer.Option(
        None,
        "--since",
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
        help="Users with a message stored since then.",
    ),
    mode: str = typer.Option(
        "replace", "--mode", help="replace: each user's facts are swapped for the new set; append: added."
    ),
    actors: int = typer.Option(1, "--actors", min=1, max=4096, help="Actors deriving in parallel."),
    concurrency: int = typer.Option(
        4, "--concurrency", min=1, max=1024, help="LLM calls in flight per actor."
    ),
    actor_cpus: float = typer.Option(0.5, "--actor-cpus", min=0, help="CPUs Ray reserves per actor."),
    actor_gpus: float | None = typer.Option(
        None, "--actor-gpus", min=0, help="GPUs per actor [default: the cluster's shared out, at most 1]."
    ),
    resume: str | None = typer.Option(
        None, "--resume", help="Resume this job: derive its users not done yet."
    ),
) -> None:
    """Re-derive users' facts in batch on Ray (a local Ray, or the cluster at RAY_ADDRESS), resumable.

    Each user is derived from all of their messages and stored with its `done` mark in one transaction:
    a user is never derived twice, and Ctrl-C then `--resume JOB` continues where the job stopped.
    """
    import asyncio
    import signal

    import ray
    from tqdm import tqdm

    from cluster.batch import BadSelection, JobFailed, RunOptions, create_job, drive
    from storage import jobs
    from storage.db import open_database

    chosen = sum((all_users, users_file is not None)) + (
        since is not None and not all_users and users_file is None
    )
    if resume is not None:
        if app_ref or all_users or users_file or since:
            _fail("--resume continues the job's own users; leave out --app, --all, --users and --since")
    elif app_ref is None or chosen != 1:
        _fail("give --app and one of --all, --users FILE or --since DATE (or --resume JOB_ID)")
    if mode not in ("replace", "append"):
        _fail(f"--mode must be replace or append, not {mode!r}")
    settings = _resolved(_settings())
    options = RunOptions(actors=actors, concurrency=concurrency, actor_cpus=actor_cpus, actor_gpus=actor_gpus)

    async def run() -> Any:
        database = await open_database(settings)
        try:
            if resume is not None:
                async with database.transaction() as db:
                    job = await jobs.take_over(db, resume)
                job_id, total = job.id, job.users_total
            else:
                assert app_ref is not None
                job_id, total = await create_job(
                    database,
                    settings,
                    app_ref,
                    mode=mode,  # type: ignore[arg-type]
                    users_file=str(users_file) if users_file else None,
                    since=since,
                    options=options,
                )
            async with database.transaction() as db:
                done_before = (await jobs.progress(db, job_id)).finished
        finally:
            await database.dispose()
        typer.echo(
            f"job {job_id}: {total} users ({'resumed' if resume else mode}); "
            f"`rapport jobs cancel {job_id}` stops it for good, Ctrl-C pauses it",
            err=True,
        )
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bar = tqdm(total=total, initial=done_before, desc="deriving", unit="user", dynamic_ncols=True)
        seen = {"done": done_before}

        def progress(p: jobs.Progress) -> None:
            bar.update(p.finished - seen["done"])
            seen["done"] = p.finished
            bar.set_postfix(failed=p.failed, facts=p.facts, refresh=False)

        try:
            return await drive(settings, job_id, options, on_progress=progress, stop=stop)
        finally:
            bar.close()

    try:
        report = _run(run())
    except BadSelection as exc:
        _fail(str(exc))
    except JobFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    p = report.progress
    typer.echo(
        f"job {report.job_id} {report.state} in {report.elapsed_s:.0f}s: {p.done} users done, {p.failed} failed, "
        f"{p.pending + p.running} not done, {p.facts} facts"
    )
    for user_id, attempts, error in report.failures:
        typer.echo(f"  failed: user {user_id} after {attempts} attempt(s): {error}")
    if report.state == "stopped":
        typer.echo(f"resume with: rapport derive --resume {report.job_id}")
        raise typer.Exit(130)
    if p.failed:
        raise typer.Exit(1)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@jobs_app.command("list")
def jobs_list(
    app_id: str | None = typer.Option(None, "--app", help="Only this app's jobs (its id)."),
) -> None:
    """The newest jobs: state, users done of all, when."""
    from storage import jobs

    async def listing(db: AsyncConnection) -> list[tuple[jobs.Job, jobs.Progress]]:
        return [(job, await jobs.progress(db, job.id)) for job in await jobs.list_jobs(db, app_id=app_id)]

    rows = _run(_in_transaction(_settings(), listing))
    if not rows:
        typer.echo("no jobs")
    for job, p in rows:
        typer.echo(
            f"{job.id}  {job.state:<10} {job.mode:<7} app {job.app_id}  {p.done}/{job.users_total} done"
            f"{f', {p.failed} failed' if p.failed else ''}  {job.created_at:%Y-%m-%d %H:%M}  {job.model}"
        )


@jobs_app.command("status")
def jobs_status(job_id: str = typer.Argument(..., help="The job's id.")) -> None:
    """One job: its settings, counts, and why users failed."""
    from storage import jobs

    async def status(db: AsyncConnection) -> tuple[jobs.Job, jobs.Progress, list[tuple[str, int, str]]]:
        return (
            await jobs.get_job(db, job_id),
            await jobs.progress(db, job_id),
            await jobs.failures(db, job_id),
        )

    job, p, failures = _run(_in_transaction(_settings(), status))
    alive = (
        f", driver {job.driver} seen {job.heartbeat_age_s:.0f}s ago"
        if job.heartbeat_age_s is not None
        else ""
    )
    typer.echo(f"job {job.id}: {job.state}{alive}")
    typer.echo(
        f"  app {job.app_id}, mode {job.mode}, model {job.model}, {json.dumps(job.settings)}, "
        f"users {json.dumps(job.selection)}"
    )
    typer.echo(
        f"  users: {job.users_total}  done: {p.done}  failed: {p.failed}  running: {p.running}  "
        f"pending: {p.pending}  facts: {p.facts}"
    )
    for user_id, attempts, error in failures:
        typer.echo(f"  failed: user {user_id} after {attempts} attempt(s): {error}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str = typer.Argument(..., help="The job's id.")) -> None:
    """Stop a job for good: no user is started after this; those being derived finish."""
    from storage import jobs

    state = _run(_in_transaction(_settings(), lambda db: jobs.cancel(db, job_id)))
    typer.echo(f"job {job_id} is {state}")


def _erase(settings: Settings, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    """Run an erasure's transaction, then see its index deletions applied: by a running service's index
    sync if one takes them within 10 s, else here (when nothing else writes the index)."""
    import asyncio

    from storage.outbox import waiting

    async def run() -> tuple[Any, str]:
        erased = await _in_transaction(settings, work)
        for _ in range(20):
            await asyncio.sleep(0.5)
            if await _in_transaction(settings, lambda db: waiting(db, erased.index_entries)) == 0:
                return erased, "removed by the running service's index sync"
        from cluster.stack import open_stack

        async with open_stack(settings) as stack:
            await stack.sync.apply(erased.index_entries)
            await stack.sync.purge_now()  # no index sync runs here to take the rows out of the files
        return erased, "removed"

    return _run(run())


def _confirm(what: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        typer.echo(f"error: erasing {what} cannot be undone; confirm with --yes", err=True)
        raise typer.Exit(2)
    typer.confirm(f"Erase {what}? This cannot be undone", abort=True)


@users_app.command("delete")
def users_delete(
    user_id: str = typer.Argument(..., help="The user's id."),
    app_id: str = typer.Option(..., "--app", help="The user's app (its id)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase a user and everything of theirs, in PostgreSQL and in the search index."""
    from storage import erasure

    settings = _settings()
    _confirm(f"user {user_id} of app {app_id} and everything of theirs", yes)
    erased, index = _erase(settings, lambda db: erasure.erase_user(db, app_id, user_id))
    typer.echo(
        f"erased user {user_id}: {erased.messages} messages, {erased.documents} documents; index entries {index}"
    )


@apps_app.command("delete")
def apps_delete(
    app_id: str = typer.Argument(..., help="The app's id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase an app with its users and everything of theirs, in PostgreSQL and in the search index."""
    from storage import erasure

    settings = _settings()
    _confirm(f"app {app_id} with all its users and their data", yes)
    erased, index = _erase(settings, lambda db: erasure.erase_app(db, app_id))
    typer.echo(
        f"erased app {app_id}: {erased.messages} messages, {erased.documents} documents; index entries {index}"
    )


@app.command("reindex")
def reindex(
    app_id: str | None = typer.Option(None, "--app", help="Rebuild only this app's rows."),
    recreate: bool = typer.Option(
        False, help="Drop and recreate the index (after changing embedding.model)."
    ),
) -> None:
    """Rebuild the LanceDB index from PostgreSQL, re-embedding every document and message.

    Run it with the service stopped, or expect writes made meanwhile to be applied again by the sync.
    """

    from tqdm import tqdm

    from cluster.stack import open_stack

    settings = _settings()
    if app_id and recreate:
        typer.echo("error: --recreate rebuilds everything; it cannot be combined with --app", err=True)
        raise typer.Exit(2)

    async def run() -> dict[str, int]:
        if app_id:
            from storage.apps import get_app

            await _in_transaction(settings, lambda db: get_app(db, app_id))  # fail fast on a wrong id
        async with open_stack(settings, recreate_index=recreate) as stack:
            bars: list[tqdm] = []

            def progress(table: str, total: int) -> tqdm:
                bars.append(tqdm(total=total, desc=f"re-indexing {table}", unit="row"))
                return bars[-1]

            try:
                return await stack.sync.reindex(app_id=app_id, progress=progress)
            finally:
                for bar in bars:
                    bar.close()

    counts = _run(run())
    typer.echo("re-indexed " + ", ".join(f"{n} {table}" for table, n in counts.items()))


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, help="Interface to listen on [default: serve.host]."),
    port: int | None = typer.Option(None, help="Port to listen on [default: serve.port]."),
    config: Path = typer.Option(Path("serve_config.yaml"), help="Serve config with deployment options."),
) -> None:
    """Start Rapport: the embedded Postgres (unless DB_CONNECTION_URI is set), migrations, Ray and the API.

    Uses the Ray at RAY_ADDRESS when set, else starts a local one. Ctrl-C or SIGTERM stops everything it
    started, at any point; it exits 0 when stopped while serving, 130 or 143 when stopped while starting.
    """
    from deployments.service import ServeOptions, run_service

    settings = _settings()
    log.info("settings: %s", json.dumps(settings.redacted()))
    options = ServeOptions(
        host=host or settings.serve.host,
        port=port or settings.serve.port,
        config=config if config.is_file() else None,
    )
    if options.config is None:
        log.warning("no %s here: using the deployment options built into the code", config)
    try:
        status = run_service(settings, options)
    except Exception as exc:
        log.exception("Rapport failed to start")
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if status:
        raise typer.Exit(status)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
