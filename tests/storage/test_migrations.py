"""The schema comes only from Alembic migrations: up from empty, down to nothing, and in step with tables.py."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text

from models.llm.client import estimate_tokens
from storage import migrate
from storage.tables import TOKEN_ESTIMATE, Base
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


def test_0010_gives_v1_rows_their_v3_shape() -> None:
    """Sessions get their id for a name and their user and the assistant peer for members; each message
    gets its sender (the assistant peer for is_user false) and a token count."""
    with scratch_database("rapport_migrate") as url:
        migrate.upgrade(url, "0009")
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO apps (id, name) VALUES ('a1', 'shop'), ('a2', 'quiet')"))
                conn.execute(
                    text(
                        "INSERT INTO users (id, app_id, name) VALUES ('u1', 'a1', 'ana'), ('u2', 'a2', 'bo')"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO sessions (id, app_id, user_id) VALUES ('s1', 'a1', 'u1'), ('s2', 'a2', 'u2')"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO messages (id, app_id, user_id, session_id, is_user, content) VALUES "
                        "('m1', 'a1', 'u1', 's1', true, 'hi'), ('m2', 'a1', 'u1', 's1', false, 'héllo ana'), "
                        "('m3', 'a2', 'u2', 's2', true, 'quiet')"
                    )
                )
            migrate.upgrade(url)
            with engine.begin() as conn:
                assistant = conn.execute(
                    text("SELECT id, assistant FROM users WHERE app_id = 'a1' AND name = 'assistant'")
                ).one()
                assert assistant.assistant is True
                assert conn.execute(text("SELECT count(*) FROM users WHERE app_id = 'a2'")).scalar_one() == 1
                senders = dict(conn.execute(text("SELECT id, peer_id FROM messages")).all())
                assert senders == {"m1": "u1", "m2": assistant.id, "m3": "u2"}
                counts = dict(conn.execute(text("SELECT content, token_count FROM messages")).all())
                assert counts == {text_: estimate_tokens(text_) for text_ in ("hi", "héllo ana", "quiet")}
                assert dict(conn.execute(text("SELECT id, name FROM sessions")).all()) == {
                    "s1": "s1",
                    "s2": "s2",
                }
                members = conn.execute(
                    text("SELECT session_id, peer_id FROM session_peers ORDER BY seq")
                ).all()
                assert [tuple(m) for m in members] == [("s1", "u1"), ("s2", "u2"), ("s1", assistant.id)]
            migrate.downgrade(url, "0009")  # and back: the v1 rows are as they were
            with engine.begin() as conn:
                assert conn.execute(text("SELECT count(*) FROM messages")).scalar_one() == 3
        finally:
            engine.dispose()


def test_the_token_count_column_is_the_python_estimate(database_url: str) -> None:
    texts = ["", "a", "hello world", "naïve café", "日本語のテキスト", "emoji 🙂🙂", "x" * 7, "x" * 8]
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            for sample in texts:
                sql = TOKEN_ESTIMATE.replace("content", ":t")
                assert conn.execute(text(f"SELECT {sql}"), {"t": sample}).scalar_one() == estimate_tokens(
                    sample
                ), sample
    finally:
        engine.dispose()
