"""Embedding throughput through Ray Serve: `@serve.batch` on versus batches of one, in one run.

    python -m bench.embed [--callers 64] [--duration 10] [--batch-sizes 64,1] [--device auto]
    python -m bench.embed --in-process [--callers 8] [--texts-per-call 3]

Deploys the Embedder once per batch size (embedding.batch_size; 1 turns batching off) and drives it
through `ServeEmbedder`, the client the API replicas and the index sync use, from --callers concurrent
callers, one text per call. With batching on, the client coalesces concurrent calls into requests of up
to batch_size texts and the deployment's `@serve.batch` merges requests from several clients; with 1,
every text is its own request and its own forward pass. Reports texts/s and per-call p50/p95 latency, and the batched/unbatched ratio. Texts are
LoCoMo turns when the data set is beside the checkout, else generated sentences.

--in-process drives the model in this process (no Ray), as `rapport deriver run`, batch actors and tests
use it: `embed`, which merges the calls that arrive while the model is busy into its next call, against
one thread hop and model call per call (queued on the model's lock), alternately, --repeats times.
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


async def drive(
    embedder, corpus: list[str], callers: int, seconds: float, per_call: int = 1
) -> tuple[int, list[float]]:
    """Calls per second from ``callers`` concurrent callers of ``per_call`` texts each, and latencies."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await embedder.embed([corpus[(i + k) % len(corpus)] for k in range(per_call)])
            latencies.append((time.perf_counter() - started) * 1000)
            i += callers * per_call

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
    parser.add_argument("--in-process", action="store_true", help="the model in this process, no Ray")
    parser.add_argument("--texts-per-call", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="with --in-process")
    args = parser.parse_args()
    if args.in_process:
        in_process(args)
        return

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
                await drive(embedder, corpus, args.callers, args.warmup, args.texts_per_call)
                return await drive(embedder, corpus, args.callers, args.duration, args.texts_per_call)

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


class OneCallEach:
    """The model called once per call, in a thread (what `embed` did before it merged calls)."""

    def __init__(self, model) -> None:
        self.model = model

    async def embed(self, texts: list[str]):
        return await asyncio.to_thread(self.model.embed_sync, texts)


def in_process(args: argparse.Namespace) -> None:
    from models.embedding import load_embedder
    from rapport.settings import Settings

    corpus = texts()
    embedding = Settings.model_validate({"embedding": {"device": args.device}}).embedding
    model = load_embedder(
        embedding.model,
        embedding.device,
        embedding.precision,
        embedding.cpu_threads,
        embedding.max_windows_per_text,
    )
    print(f"# bench/embed.py --in-process  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
          f"callers={args.callers} texts/call={args.texts_per_call}  {model.precision} on {model.device}")  # fmt: skip
    print(f"{'variant':>14} {'calls/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    variants = {"merged (embed)": model, "one call each": OneCallEach(model)}

    async def run() -> None:
        for _ in range(args.repeats):
            for name, embedder in variants.items():
                await drive(embedder, corpus, args.callers, args.warmup, args.texts_per_call)
                rate, latencies = await drive(
                    embedder, corpus, args.callers, args.duration, args.texts_per_call
                )
                latencies.sort()
                p50, p95 = latencies[len(latencies) // 2], latencies[int(0.95 * len(latencies))]
                print(
                    f"{name:>14} {rate:>8} {rate * args.texts_per_call:>8} {p50:>8.1f} {p95:>8.1f}",
                    flush=True,
                )

    asyncio.run(run())


if __name__ == "__main__":
    main()
