"""The schema comes only from Alembic migrations: up from empty, down to nothing, and in step with tables.py."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

from storage import migrate
from storage.tables import Base
from tests.db import scratch_database

TABLES = {"apps", "users", "sessions", "messages", "metamessages", "collections", "documents"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_then_downgrade_to_base_and_back() -> None:
    with scratch_database("rapport_migrate") as url:
        assert _tables(url) == set()
        assert migrate.current_revision(url) is None

        migrate.upgrade(url)
        assert _tables(url) >= TABLES
        assert migrate.current_revision(url) == migrate.head_revision()

        migrate.downgrade(url, "base")
        assert _tables(url) == set()
        assert migrate.current_revision(url) is None

        migrate.upgrade(url)  # and up again: downgrade left nothing behind that blocks it
        assert _tables(url) >= TABLES


def test_migrations_match_the_declared_tables(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == [], f"tables.py and the migrations disagree; add a migration: {diff}"
