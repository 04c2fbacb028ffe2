"""The `rapport` command."""

from __future__ import annotations

import json
import logging
import sys

import typer

from rapport.logs import configure_logging
from rapport.settings import Settings, get_settings, mask_url_password

log = logging.getLogger("rapport")

app = typer.Typer(
    help="Rapport: memory and user models for LLM apps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's message names the bad key and value
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.app.log_level)
    return settings


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
