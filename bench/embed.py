"""Embedding throughput through Ray Serve: `@serve.batch` on versus batches of one, in one run.

    python -m bench.embed [--callers 64] [--duration 10] [--batch-sizes 64,1] [--device auto]

Deploys the Embedder once per batch size (embedding.batch_size; 1 turns batching off) and drives it
through `ServeEmbedder`, the client the API replicas and the index sync use, from --callers concurrent
callers, one text per call. With batching on, the client coalesces concurrent calls into requests of up
to batch_size texts and the deployment's `@serve.batch` merges requests from several clients; with 1,
every text is its own request and its own forward pass. Reports texts/s and per-call p50/p95 latency, and the batched/unbatched ratio. Texts are
LoCoMo turns when the data set is beside the checkout, else generated sentences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev.json"


def texts() -> list[str]:
    if LOCOMO.is_file():
        data = json.loads(LOCOMO.read_text())
        return [
            turn["text"]
            for sample in data
            for key, turns in sample["conversation"].items()
            if key.startswith("session_") and isinstance(turns, list)
            for turn in turns
        ]
    words = [
        "the",
        "a",
        "user",
        "likes",
        "tea",
        "coffee",
        "mountains",
        "music",
        "city",
        "weekend",
        "sister",
        "job",
        "travel",
        "books",
        "morning",
    ]
    rng = random.Random(7)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 30))) for _ in range(3000)]


async def drive(embedder, corpus: list[str], callers: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await embedder.embed([corpus[i % len(corpus)]])
            latencies.append((time.perf_counter() - started) * 1000)
            i += callers

    began = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return int(len(latencies) / (time.perf_counter() - began)), latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="64,1")
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--num-cpus", type=float, default=float(os.cpu_count() or 1), help="for the Embedder replica"
    )
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.embedder import Embedder, ServeEmbedder
    from rapport.settings import Settings

    corpus = texts()
    ray.init(include_dashboard=False, logging_level="WARNING")
    print(f"# bench/embed.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  {vars(args)}")
    print(f"{'batch size':>10} {'texts/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    results = {}
    try:
        for size in (int(s) for s in args.batch_sizes.split(",")):
            settings = Settings.model_validate(
                {"embedding": {"batch_size": size, "batch_wait_s": args.batch_wait_s, "device": args.device}}
            )
            app = f"embed-bench-{size}"
            # The Embedder gets the box's cores, as a dedicated embedding replica would.
            deployment = Embedder.options(
                name=f"Embedder{size}", ray_actor_options={"num_cpus": args.num_cpus}
            )
            handle = serve.run(deployment.bind(settings.model_dump()), name=app, route_prefix=None)

            async def measure(handle=handle, settings=settings) -> tuple[int, list[float]]:
                embedder = await ServeEmbedder.connect(handle, settings.embedding)
                await drive(embedder, corpus, args.callers, args.warmup)
                return await drive(embedder, corpus, args.callers, args.duration)

            rate, latencies = asyncio.run(measure())
            latencies.sort()
            p50, p95 = latencies[len(latencies) // 2], latencies[int(0.95 * len(latencies))]
            print(f"{size:>10} {rate:>9} {p50:>8.1f} {p95:>8.1f}", flush=True)
            results[size] = rate
            serve.delete(app)
    finally:
        serve.shutdown()
        ray.shutdown()
    sizes = sorted(results)
    if len(sizes) >= 2 and results[sizes[0]]:
        print(
            f"\nbatched ({sizes[-1]}) / unbatched ({sizes[0]}): {results[sizes[-1]] / results[sizes[0]]:.1f}x"
        )


if __name__ == "__main__":
    main()
