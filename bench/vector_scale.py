"""Document search at scale: 200,000 documents for one app, ANN index against brute force.

    python -m bench.vector_scale [--rows 200000] [--queries 200] [--uri /tmp/dir]

Loads synthetic unit vectors (384-d, drawn around 2,000 cluster centres, as embeddings of real text
cluster by topic) into the documents table through the same `VectorIndex` the service uses, in batches
of 10,000, then builds the ANN index with the same upkeep call the index sync makes (`maintain`).
Queries are vectors near stored ones. Reports the ingest rate, the index build time, query latency
p50/p95 with the ANN index and by brute force (exact scan), and recall@10 of the ANN results against
the exact ones.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage.index import DOCUMENTS, AnnOptions, VectorIndex  # noqa: E402

DIMENSION = 384
BATCH = 10_000


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic(rows: int, rng: np.random.Generator, spread: float = 0.7) -> np.ndarray:
    """Points around 2,000 centres; with ``spread`` 0.7 two points of one topic have cosine about 0.67,
    like embeddings of related sentences (unrelated ones sit near 0)."""
    centres = unit(rng.standard_normal((2_000, DIMENSION)))
    noise = rng.standard_normal((rows, DIMENSION)).astype(np.float32) * (spread / np.sqrt(DIMENSION))
    return unit(centres[rng.integers(0, len(centres), rows)] + noise)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, uri: str) -> None:
    rng = np.random.default_rng(42)
    vectors = synthetic(args.rows, rng)
    index = await VectorIndex.open(
        uri, DIMENSION, AnnOptions(min_rows=args.rows)
    )  # the service's defaults otherwise
    scope = {"app_id": "bench-app"}
    now = datetime.now(UTC)

    started = time.perf_counter()
    for start in range(0, args.rows, BATCH):
        block = vectors[start : start + BATCH]
        await index.upsert(
            DOCUMENTS,
            [
                {"id": f"doc-{start + i}", "app_id": "bench-app", "user_id": f"user-{(start + i) % 50}",
                 "collection_id": f"collection-{(start + i) % 50}", "vector": v, "created_at": now}
                for i, v in enumerate(block)
            ],
        )  # fmt: skip
    ingest_s = time.perf_counter() - started
    print(f"ingest: {args.rows} documents in {ingest_s:.1f}s = {args.rows / ingest_s:,.0f} documents/s")

    started = time.perf_counter()
    report = await index.maintain()
    print(
        f"upkeep with ANN index build (HNSW-SQ, cosine): {time.perf_counter() - started:.1f}s {report[DOCUMENTS]}"
    )

    picks = rng.integers(0, args.rows, args.queries)
    nudge = rng.standard_normal((args.queries, DIMENSION)).astype(np.float32) * (0.3 / np.sqrt(DIMENSION))
    queries = unit(vectors[picks] + nudge)
    # The whole app (every row), and one collection of it (1 row in 50: a prefiltered search, as the
    # documents query runs).
    for label, scope in (("one app, 200k rows", {"app_id": "bench-app"}),
                         ("one collection, 4k rows", {"app_id": "bench-app", "collection_id": "collection-7"})):  # fmt: skip
        results: dict[bool, list[list[str]]] = {}
        for exact in (True, False):
            await index.nearest(DOCUMENTS, queries[0], scope=scope, limit=10, exact=exact)  # warm caches
            latencies, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = await index.nearest(DOCUMENTS, q, scope=scope, limit=10, exact=exact)
                latencies.append((time.perf_counter() - t) * 1000)
                found.append([h.id for h in hits])
            results[exact] = found
            name = "brute force" if exact else "ANN index "
            print(
                f"{label:<24} {name}: p50 {percentile(latencies, 0.5):6.1f} ms  p95 {percentile(latencies, 0.95):6.1f} ms"
            )
        pairs = zip(results[False], results[True], strict=True)
        recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in pairs if e])
        print(f"{label:<24} recall@10 of the ANN results against brute force: {recall:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--uri", help="LanceDB URI to use (default: a temporary directory)")
    args = parser.parse_args()
    print(f"# bench/vector_scale.py  {time.strftime('%Y-%m-%d %H:%M')}  {vars(args)}")
    if args.uri:
        asyncio.run(run(args, args.uri))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(args, str(Path(tmp) / "lancedb")))


if __name__ == "__main__":
    main()
