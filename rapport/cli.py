"""The `rapport` command."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
    from sqlalchemy import text

    from storage import outbox

    async def status(db: AsyncConnection) -> tuple[outbox.Lag, list[Any]]:
        lag = await outbox.lag(db)
        reasons = await db.execute(
            text(
                "SELECT last_error, count(*) FROM index_outbox WHERE parked GROUP BY 1 ORDER BY 2 DESC LIMIT 10"
            )
        )
        return lag, list(reasons)

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


@deriver_app.command("run")
def deriver_run() -> None:
    """Derive in the foreground (no API, no Ray) until Ctrl-C: deriver.concurrency batches at a time,
    with the models the settings name. Any number may run beside `rapport serve`'s workers."""
    import asyncio
    import signal

    from cluster.deriver import derive_until

    settings = _settings()

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

    from rapport.stack import open_stack

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

    Uses the Ray at RAY_ADDRESS when set, else starts a local one. Ctrl-C or SIGTERM stops everything.
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
        run_service(settings, options)
    except Exception as exc:
        log.exception("Rapport failed to start")
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
