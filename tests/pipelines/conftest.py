"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.embedding.hashing import HashingEmbedder
from pipelines.indexing import IndexSync
from pipelines.memory import Memory
from storage.db import Database
from storage.index import VectorIndex


@pytest.fixture
async def memory_hashed(database: Database, tmp_path: Path) -> Memory:
    """The services over the test's database with the hashing embedder (deterministic, no weights)."""
    embedder = HashingEmbedder()
    index = await VectorIndex.open(str(tmp_path / "lancedb"), embedder.dimension)
    return Memory(database, embedder, index, IndexSync(database, index, embedder))
