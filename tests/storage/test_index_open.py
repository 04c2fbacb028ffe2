"""Opening the index: several processes open a fresh one at once when the service starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.index import MESSAGES, VectorIndex


async def test_opening_a_fresh_index_concurrently_creates_it_once(tmp_path: Path) -> None:
    opened = await asyncio.gather(*(VectorIndex.open(str(tmp_path / "lancedb"), 8) for _ in range(6)))
    indices = await opened[0]._tables[MESSAGES].list_indices()
    assert [i.index_type for i in indices].count("FTS") == 1


async def test_overlapping_upserts_of_the_same_rows_store_them_once(tmp_path: Path) -> None:
    """The single writer's background round and an inline write can upsert the same new rows at once;
    two overlapping LanceDB merge_inserts would both insert them."""
    from datetime import UTC, datetime

    import numpy as np

    from storage.index import DOCUMENTS

    index = await VectorIndex.open(str(tmp_path / "lancedb"), 8)
    now = datetime.now(UTC)
    for batch in range(5):
        rows = [
            {"id": f"{batch}-{i}", "app_id": "a", "user_id": "u", "collection_id": "c", "created_at": now,
             "vector": np.random.default_rng(i).random(8, dtype=np.float32)}
            for i in range(20)
        ]  # fmt: skip
        await asyncio.gather(*(index.upsert(DOCUMENTS, rows) for _ in range(3)))
    assert await index.count(DOCUMENTS) == 100


async def test_a_big_table_gets_an_index_of_its_ids_and_upserts_still_replace_rows(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    import numpy as np

    from storage.index import DOCUMENTS

    index = await VectorIndex.open(str(tmp_path / "lancedb"), 8)
    index.id_index_min_rows = 30
    table = index._tables[DOCUMENTS]

    def rows(ids: range, collection: str) -> list[dict]:
        return [
            {"id": f"d{i}", "app_id": "a", "user_id": "u", "collection_id": collection,
             "created_at": datetime.now(UTC), "vector": np.random.default_rng(i).random(8, dtype=np.float32)}
            for i in ids
        ]  # fmt: skip

    await index.upsert(DOCUMENTS, rows(range(20), "c"))
    await index.maintain()
    assert "id_idx" not in {i.name for i in await table.list_indices()}, "20 rows: reading the ids is cheaper"
    await index.upsert(DOCUMENTS, rows(range(20, 40), "c"))
    await index.maintain()
    assert "id_idx" in {i.name for i in await table.list_indices()}
    # Through the index: the rows written before it and after it are replaced, not written twice.
    await index.upsert(DOCUMENTS, rows(range(35, 45), "moved"))
    assert await index.count(DOCUMENTS) == 45
    assert await index.count(DOCUMENTS, {"collection_id": "moved"}) == 10
    await index.delete(DOCUMENTS, ids=["d0", "d44"])
    assert await index.count(DOCUMENTS) == 43
