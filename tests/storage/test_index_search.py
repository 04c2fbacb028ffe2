"""Vector search in the index: several query vectors answered in one query, each on its own."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from storage.index import DOCUMENTS, VectorIndex


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


async def test_nearest_each_matches_nearest_for_every_vector_within_the_scope(tmp_path: Path) -> None:
    index = await VectorIndex.open(str(tmp_path / "lancedb"), 8)
    stored = unit(np.random.default_rng(0).normal(size=(60, 8)))
    now = datetime.now(UTC)
    await index.upsert(
        DOCUMENTS,
        [
            {"id": f"d{i}", "app_id": "a", "user_id": "u", "collection_id": "mine" if i < 40 else "theirs",
             "created_at": now, "vector": stored[i]}
            for i in range(60)
        ],
    )  # fmt: skip
    queries = np.stack([stored[3], stored[50], unit(np.random.default_rng(1).normal(size=(1, 8)))[0]])
    scope = {"collection_id": "mine"}

    each = await index.nearest_each(DOCUMENTS, queries, scope=scope, limit=3, exact=True)

    assert len(each) == 3
    for query, hits in zip(queries, each, strict=True):
        assert hits == await index.nearest(DOCUMENTS, query, scope=scope, limit=3, exact=True)
        assert len(hits) == 3
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(int(h.id[1:]) < 40 for h in hits)  # nothing from another collection
    assert each[0][0].id == "d3" and abs(each[0][0].score - 1.0) < 1e-5
    # d50 belongs to another collection: its closest in scope is the best of the first 40 by cosine
    best = int(np.argmax(stored[:40] @ stored[50]))
    assert each[1][0].id == f"d{best}"
    assert await index.nearest_each(DOCUMENTS, queries[:0], scope=scope, limit=3) == []
