"""Opening the index: several processes open a fresh one at once when the service starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.index import MESSAGES, VectorIndex


async def test_opening_a_fresh_index_concurrently_creates_it_once(tmp_path: Path) -> None:
    opened = await asyncio.gather(*(VectorIndex.open(str(tmp_path / "lancedb"), 8) for _ in range(6)))
    indices = await opened[0]._tables[MESSAGES].list_indices()
    assert [i.index_type for i in indices].count("FTS") == 1
