"""Batch re-derivation (`rapport derive`) on a local Ray: throughput against calls in flight, and the
driver's memory against the job's size.

    python -m bench.batch_derive grid    [--users 10000] [--actors 1,2,4] [--inflight 1,2,4,8,16]
    python -m bench.batch_derive memory  [--users 10000,100000] [--actors 4] [--inflight 16]

The users (20 messages each, one session) are bulk-loaded with COPY into a scratch database with
triggers off, so the derivation queue and the index outbox start empty: what is measured is the job.
The LLM is a double that sleeps --latency (0.2 s) per call and answers two facts; the embedder is the
deterministic hashing one (each actor's "model copy" costs nothing): the figures are the job's own
overhead (ledger, reads, writes, the index writer), the part that does not shrink on a bigger GPU.

grid: for each (actors, calls in flight per actor) a fresh job over all users runs for --warmup s, then
users done are counted over --window s and the job is cancelled. Linear is the 1 x 1 rate times the
total calls in flight; the ideal is 60 / latency users a minute per call in flight (one call a user).
memory: each size in a fresh database, the whole job driven to its end by a child process, whose peak
RSS (getrusage) is the driver's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from models.llm import ChatMessage  # noqa: E402
from pipelines.deriver.prompts import asks_for_facts  # noqa: E402
from rapport.settings import Settings  # noqa: E402
from storage import migrate  # noqa: E402
from storage.ids import new_id  # noqa: E402
from tests.db import scratch_database  # noqa: E402

LINE = re.compile(r"^\[(\d+)\] (\S+): (.*)$", re.M)
WORDS = [f"word{i}" for i in range(20_000)]


def two_facts(prompt: Sequence[ChatMessage]) -> str:
    """The double's answer: a fact from each of the first two of the user's messages in the batch."""
    if not asks_for_facts(prompt):
        return "a summary"
    found = [(n, said) for n, who, said in LINE.findall(prompt[-1].content) if who != "assistant"]
    facts = [{"fact": f"the user mentioned {said}", "sources": [int(n)]} for n, said in found[:2]]
    return json.dumps({"facts": facts})


def load(url: str, n_users: int, n_messages: int) -> str:
    """An app with ``n_users`` users of one session each, by COPY with triggers off; the app's id."""
    rng = random.Random(11)
    app_id = new_id()
    started = time.monotonic()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")  # no queue, no outbox: only the job's work
        conn.execute("INSERT INTO apps (id, name) VALUES (%s, 'bench')", (app_id,))
        for start in range(0, n_users, 5000):
            users, sessions, messages = io.StringIO(), io.StringIO(), io.StringIO()
            for _ in range(start, min(n_users, start + 5000)):
                user_id, session_id = new_id(), new_id()
                users.write(f"{user_id}\t{app_id}\tu-{user_id}\n")
                sessions.write(f"{session_id}\t{app_id}\t{user_id}\n")
                for i in range(n_messages):
                    said = " ".join(rng.sample(WORDS, 8))
                    messages.write(
                        f"{new_id()}\t{app_id}\t{user_id}\t{session_id}\t{'t' if i % 2 == 0 else 'f'}\t{said}\n"
                    )
            for table, columns, data in (
                ("users", "id, app_id, name", users),
                ("sessions", "id, app_id, user_id", sessions),
                ("messages", "id, app_id, user_id, session_id, is_user, content", messages),
            ):
                with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    copy.write(data.getvalue())
        conn.commit()
        conn.execute("ANALYZE")
    print(f"loaded {n_users} users x {n_messages} messages in {time.monotonic() - started:.0f}s", flush=True)
    return app_id


def settings_for(url: str, home: Path) -> Settings:
    return Settings.model_validate(
        {
            "db": {"connection_uri": url, "migrate_on_start": False},
            "vector_store": {"uri": str(home / "lancedb")},
            "app": {"home": str(home), "log_level": "WARNING"},
        }
    )


def start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}},
        )


async def timed_run(
    url: str,
    home: Path,
    app_id: str,
    actors: int,
    inflight: int,
    latency: float,
    warmup: float,
    window: float,
) -> float:
    """Users a minute over ``window`` seconds after ``warmup``, in a job then cancelled."""
    from cluster.batch import RunOptions, create_job, drive
    from models.embedding.hashing import HashingEmbedder
    from models.llm.scripted import ScriptedLLM
    from storage import jobs
    from storage.db import open_database

    settings = settings_for(url, home)
    options = RunOptions(actors=actors, concurrency=inflight, actor_cpus=0.01, poll_s=0.5)
    database = await open_database(settings)
    job_id, _ = await create_job(database, settings, app_id, mode="replace", options=options)
    samples: list[tuple[float, int]] = []
    deriving = asyncio.Event()

    def progress(p: jobs.Progress) -> None:
        samples.append((time.monotonic(), p.done))
        if p.done:
            deriving.set()

    driving = asyncio.create_task(
        drive(
            settings,
            job_id,
            options,
            llm=ScriptedLLM(two_facts, latency_s=latency),
            embedder=HashingEmbedder(),
            on_progress=progress,
        )
    )
    await deriving.wait()  # the actors have started and derived a first user
    await asyncio.sleep(warmup)
    t0, done0 = samples[-1]
    await asyncio.sleep(window)
    t1, done1 = samples[-1]
    async with database.transaction() as db:
        await jobs.cancel(db, job_id)
    await driving
    await database.dispose()
    return 60 * (done1 - done0) / (t1 - t0)


def grid(args: argparse.Namespace) -> None:
    actors_list = [int(a) for a in args.actors.split(",")]
    inflight_list = [int(i) for i in args.inflight.split(",")]
    ideal_per_call = 60 / args.latency
    print(
        f"# bench/batch_derive.py grid  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
        f"users={args.users}x{args.messages} msgs  latency={args.latency}s  window={args.window}s"
    )
    with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench_batch") as url:
        migrate.upgrade(url)
        app_id = load(url, args.users, args.messages)
        start_ray()
        base: float | None = None
        print(f"{'actors':>6} {'in flight':>9} {'users/min':>10} {'linear':>8} {'ideal':>8}")
        for actors in actors_list:
            for inflight in inflight_list:
                rate = asyncio.run(
                    timed_run(
                        url, Path(tmp), app_id, actors, inflight, args.latency, args.warmup, args.window
                    )
                )
                total = actors * inflight
                base = base if base is not None else rate / total
                print(
                    f"{actors:>6} {inflight:>9} {rate:>10.0f} {rate / (base * total):>8.0%} "
                    f"{rate / (ideal_per_call * total):>8.0%}   [goal: linear at least 80%]",
                    flush=True,
                )


def memory(args: argparse.Namespace) -> None:
    print(
        f"# bench/batch_derive.py memory  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
        f"actors={args.actors} in flight={args.inflight}  latency={args.latency}s"
    )
    peaks = {}
    for n_users in (int(n) for n in args.users.split(",")):
        with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench_batch") as url:
            migrate.upgrade(url)
            app_id = load(url, n_users, args.messages)
            child = subprocess.run(
                [sys.executable, "-m", "bench.batch_derive", "drive", url, tmp, app_id,
                 "--actors", str(args.actors), "--inflight", str(args.inflight), "--latency", str(args.latency)],
                cwd=REPO, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if child.returncode != 0:
                sys.exit(f"the driver failed:\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            peaks[n_users] = result["peak_rss_mib"]
            print(
                f"{n_users:>7} users: driver peak RSS {result['peak_rss_mib']:.0f} MiB, "
                f"{result['done']} done in {result['seconds']:.0f}s ({60 * result['done'] / result['seconds']:.0f} users/min)",
                flush=True,
            )
    sizes = sorted(peaks)
    if len(sizes) > 1:
        ratio = peaks[sizes[-1]] / peaks[sizes[0]]
        print(f"peak RSS ratio {sizes[-1]} / {sizes[0]} users: {ratio:.2f}   [goal: at most 1.2]")


def drive_child(args: argparse.Namespace) -> None:
    """The driver, alone in its process: a job over every user of the app, to its end."""
    from cluster.batch import RunOptions, create_job, drive
    from models.embedding.hashing import HashingEmbedder
    from models.llm.scripted import ScriptedLLM
    from storage.db import open_database

    start_ray()
    settings = settings_for(args.url, Path(args.home))
    options = RunOptions(actors=args.actors, concurrency=args.inflight, actor_cpus=0.01, poll_s=1.0)

    async def run() -> dict[str, float]:
        database = await open_database(settings)
        job_id, _ = await create_job(database, settings, args.app_id, mode="replace", options=options)
        await database.dispose()
        started = time.monotonic()
        report = await drive(
            settings,
            job_id,
            options,
            llm=ScriptedLLM(two_facts, latency_s=args.latency),
            embedder=HashingEmbedder(),
        )
        return {"done": report.progress.done, "seconds": time.monotonic() - started}

    result = asyncio.run(run())
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# --- the same job on Ray Data, for comparison ---------------------------------------------------------


class DataRederiver:
    """A Ray Data UDF deriving the users it is handed (one per call, ``inflight`` calls at once per
    actor) with the job actors' own code: the same claims, derivation, group commit and index writer."""

    def __init__(self, settings: dict, job_id: str, inflight: int, latency: float, writer: object) -> None:
        from cluster.batch import RederiveActor
        from models.embedding.hashing import HashingEmbedder
        from models.llm.scripted import ScriptedLLM

        self.worker = RederiveActor(
            settings,
            job_id,
            f"data:{job_id}:{os.urandom(4).hex()}",
            concurrency=inflight,
            lease_s=600,
            llm=ScriptedLLM(two_facts, latency_s=latency),
            embedder=HashingEmbedder(),
            writer=writer,
        )
        self.opened: tuple | None = None
        self.opening = asyncio.Lock()

    async def __call__(self, batch: dict) -> dict:
        from contextlib import AsyncExitStack

        from sqlalchemy import text

        from storage.jobs import Claimed

        async with self.opening:
            if self.opened is None:
                self.resources = AsyncExitStack()
                self.opened = await self.resources.enter_async_context(self.worker.opened())
        rederiver, job = self.opened
        ns = [int(n) for n in batch["n"]]
        async with self.worker.database.transaction() as db:
            rows = await db.execute(
                text(
                    "UPDATE derivation_job_users SET state = 'running', owner = :owner, attempts = attempts + 1 "
                    "WHERE job_id = :job AND n = ANY(CAST(:ns AS bigint[])) AND state = 'pending' "
                    "AND EXISTS (SELECT 1 FROM derivation_jobs WHERE id = :job AND state = 'running') "
                    "RETURNING n, user_id, attempts"
                ),
                {"owner": self.worker.owner, "job": job.id, "ns": ns},
            )
            claimed = [Claimed(r.n, r.user_id, r.attempts) for r in rows]
        await asyncio.gather(*(self.worker._derive(rederiver, job.app_id, job.mode, c) for c in claimed))
        return {"n": batch["n"]}


def data_drive_child(args: argparse.Namespace) -> None:
    """Users a minute with Ray Data as the driver: read_sql over the ledger (sharded on its bigint
    ``n`` with ABS), an actor pool of DataRederivers; measured like ``timed_run``."""
    os.environ["RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY"] = str(args.inflight)
    import threading

    import ray
    import ray.data

    from cluster.batch import JobIndexWriter, RunOptions, create_job
    from models.embedding.hashing import HashingEmbedder
    from storage.db import open_database

    start_ray()
    settings = settings_for(args.url, Path(args.home))
    plain = settings.model_dump(mode="json")

    async def new_job() -> str:
        database = await open_database(settings)
        job_id, _ = await create_job(database, settings, args.app_id, mode="replace", options=RunOptions())
        await database.dispose()
        return job_id

    job_id = asyncio.run(new_job())
    writer = ray.remote(JobIndexWriter).options(num_cpus=0).remote(plain, HashingEmbedder())
    ray.get(writer.ready.remote())
    libpq = args.url.replace("postgresql+psycopg://", "postgresql://")
    users = ray.data.read_sql(
        f"SELECT n FROM derivation_job_users WHERE job_id = '{job_id}' AND state = 'pending'",
        lambda: psycopg.connect(libpq),
        shard_keys=["n"],
        shard_hash_fn="ABS",
        override_num_blocks=max(8, 4 * args.actors),
    )
    derived = users.map_batches(
        DataRederiver,
        fn_constructor_args=(plain, job_id, args.inflight, args.latency, writer),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=0.01,
    )
    finished = threading.Event()

    def consume() -> None:
        for _ in derived.iter_batches(batch_size=None):
            pass
        finished.set()

    threading.Thread(target=consume, daemon=True).start()

    def done() -> tuple[float, int]:
        with psycopg.connect(libpq) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM derivation_job_users WHERE job_id = %s AND state = 'done'", (job_id,)
            ).fetchone()
        return time.monotonic(), n

    while done()[1] == 0:
        time.sleep(0.5)
    time.sleep(args.warmup)
    t0, done0 = done()
    time.sleep(args.window)
    t1, done1 = done()
    with psycopg.connect(libpq) as conn:
        conn.execute("UPDATE derivation_jobs SET state = 'cancelled' WHERE id = %s", (job_id,))
    finished.wait(timeout=120)
    ray.shutdown()  # its map workers with it
    print(json.dumps({"users_per_min": 60 * (done1 - done0) / (t1 - t0)}))


def compare(args: argparse.Namespace) -> None:
    print(
        f"# bench/batch_derive.py compare  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
        f"users={args.users}x{args.messages} msgs  latency={args.latency}s  window={args.window}s"
    )
    with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench_batch") as url:
        migrate.upgrade(url)
        app_id = load(url, args.users, args.messages)
        print(f"{'actors x in flight':>18} {'actors (users/min)':>19} {'Ray Data (users/min)':>21}")
        for config in args.configs.split(","):
            actors, inflight = (int(x) for x in config.split("x"))
            runs = [
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.batch_derive",
                        driver,
                        url,
                        tmp,
                        app_id,
                        "--actors",
                        str(actors),
                        "--inflight",
                        str(inflight),
                        "--latency",
                        str(args.latency),
                        "--warmup",
                        str(args.warmup),
                        "--window",
                        str(args.window),
                    ],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=False,
                )  # fmt: skip
                for driver in ("time-actors", "data-drive")
            ]
            for run in runs:
                if run.returncode != 0:
                    sys.exit(f"a run failed:\n{run.stderr[-3000:]}")
            rates = [json.loads(run.stdout.strip().splitlines()[-1])["users_per_min"] for run in runs]
            print(f"{config:>18} {rates[0]:>19.0f} {rates[1]:>21.0f}", flush=True)


def time_actors_child(args: argparse.Namespace) -> None:
    start_ray()
    rate = asyncio.run(
        timed_run(
            args.url,
            Path(args.home),
            args.app_id,
            args.actors,
            args.inflight,
            args.latency,
            args.warmup,
            args.window,
        )
    )
    print(json.dumps({"users_per_min": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("grid")
    g.add_argument("--users", type=int, default=10_000)
    g.add_argument("--messages", type=int, default=20)
    g.add_argument("--latency", type=float, default=0.2)
    g.add_argument("--actors", default="1,2,4")
    g.add_argument("--inflight", default="1,2,4,8,16")
    g.add_argument("--warmup", type=float, default=5.0)
    g.add_argument("--window", type=float, default=20.0)
    m = commands.add_parser("memory")
    m.add_argument("--users", default="10000,100000")
    m.add_argument("--messages", type=int, default=20)
    m.add_argument("--latency", type=float, default=0.2)
    m.add_argument("--actors", type=int, default=4)
    m.add_argument("--inflight", type=int, default=16)
    d = commands.add_parser("drive")
    d.add_argument("url")
    d.add_argument("home")
    d.add_argument("app_id")
    d.add_argument("--actors", type=int, required=True)
    d.add_argument("--inflight", type=int, required=True)
    d.add_argument("--latency", type=float, required=True)
    c = commands.add_parser("compare")
    c.add_argument("--users", type=int, default=10_000)
    c.add_argument("--messages", type=int, default=20)
    c.add_argument("--latency", type=float, default=0.2)
    c.add_argument("--configs", default="1x16,4x4,4x16")
    c.add_argument("--warmup", type=float, default=5.0)
    c.add_argument("--window", type=float, default=20.0)
    for name in ("data-drive", "time-actors"):
        t = commands.add_parser(name)
        t.add_argument("url")
        t.add_argument("home")
        t.add_argument("app_id")
        t.add_argument("--actors", type=int, required=True)
        t.add_argument("--inflight", type=int, required=True)
        t.add_argument("--latency", type=float, required=True)
        t.add_argument("--warmup", type=float, required=True)
        t.add_argument("--window", type=float, required=True)
    args = parser.parse_args()
    os.environ["TEST_DATABASE_URL"] = args.database_url
    commands_by_name = {
        "grid": grid,
        "memory": memory,
        "drive": drive_child,
        "compare": compare,
        "data-drive": data_drive_child,
        "time-actors": time_actors_child,
    }
    commands_by_name[args.command](args)


if __name__ == "__main__":
    main()
