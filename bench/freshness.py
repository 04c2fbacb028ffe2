"""How soon new messages are searchable, with the deriver idle and with the local model deriving on the
same cores: the index's lag while messages arrive, through a real `rapport serve`.

    python -m bench.freshness [--messages 1000] [--rate 50] [--modes idle,busy] [--database-url URL]

For each mode it starts `rapport serve` on a fresh database (the server TEST_DATABASE_URL or
--database-url names; an embedded one otherwise): ``idle`` with the deriver off, ``busy`` with the
default local model deriving (a head start of messages keeps it busy before the clock starts). Then it
stores ``--messages`` messages in batches of 10 at ``--rate`` a second and samples, every 0.25 s, the
age of the oldest write waiting for the index (the outbox). It prints the worst lag seen, how long after
the last write the index was caught up, and checks that a sample of the messages is found by search.
Goal: every message searchable within 15 s of being stored, with the model deriving.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.db import scratch_database  # noqa: E402
from tests.served import rapport_serve  # noqa: E402

BATCH = 10
SESSIONS = 20
HEAD_START = 60  # messages stored (and waited on until the model is deriving) before the clock starts


def lag(db_url: str) -> tuple[int, float]:
    """Entries waiting for the index and the age of the oldest, in seconds."""
    with psycopg.connect(
        db_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    ) as conn:
        n, age = conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM index_outbox "
            "WHERE NOT parked"
        ).fetchone()
    return int(n), float(age)


def deriving(db_url: str) -> int:
    with psycopg.connect(
        db_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True
    ) as conn:
        return int(
            conn.execute("SELECT count(*) FROM derivation_sessions WHERE leased_until > now()").fetchone()[0]
        )


async def post(http: aiohttp.ClientSession, path: str, body: dict) -> dict:
    async with http.post(path, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def run_mode(mode: str, url: str, db_url: str, args: argparse.Namespace) -> dict[str, float]:
    async with aiohttp.ClientSession(base_url=url) as http:
        app = (await post(http, "/v1/apps", {"name": f"fresh-{mode}"}))["id"]
        user = (await post(http, f"/v1/apps/{app}/users", {"name": "ana"}))["id"]
        base = f"/v1/apps/{app}/users/{user}/sessions"
        sessions = [(await post(http, base, {}))["id"] for _ in range(SESSIONS)]
        if mode == "busy":
            for i in range(HEAD_START // BATCH):
                turns = [{"content": f"I went hiking near Sintra on day {i}, turn {j}.", "is_user": j % 2 == 0,
                          "metadata": {}} for j in range(BATCH)]  # fmt: skip
                await post(http, f"{base}/{sessions[i % SESSIONS]}/messages/batch", {"messages": turns})
            started = time.monotonic()
            while deriving(db_url) == 0:
                assert time.monotonic() - started < 300, "the deriver never started deriving"
                await asyncio.sleep(0.5)
            print(
                f"  [{mode}] the model is deriving; storing {args.messages} messages at {args.rate}/s",
                flush=True,
            )
        markers: list[str] = []
        samples: list[float] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                samples.append(lag(db_url)[1])
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        first = time.monotonic()
        for b in range(args.messages // BATCH):
            due = first + b * BATCH / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            turns = []
            for _ in range(BATCH):
                marker = "m" + uuid.uuid4().hex[:12]
                markers.append(marker)
                turns.append({"content": f"Note {marker}: ana mentioned her garden again.", "is_user": True,
                              "metadata": {}})  # fmt: skip
            await post(http, f"{base}/{sessions[b % SESSIONS]}/messages/batch", {"messages": turns})
        last = time.monotonic()
        while lag(db_url)[0] > 0:
            assert time.monotonic() - last < 600, "the index did not catch up in 10 minutes"
            await asyncio.sleep(0.1)
        caught_up = time.monotonic() - last
        stop.set()
        await sampler
        found = 0
        for marker in markers[:: max(1, len(markers) // 20)]:
            hits = await post(
                http, f"/v1/apps/{app}/users/{user}/search", {"query": marker, "mode": "fulltext"}
            )
            found += any(marker in hit["message"]["content"] for hit in hits)
        checked = len(markers[:: max(1, len(markers) // 20)])
    return {
        "worst_lag_s": max(samples, default=0.0),
        "median_lag_s": statistics.median(samples) if samples else 0.0,
        "caught_up_after_last_s": caught_up,
        "write_s": last - first,
        "found": found,
        "checked": checked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="messages stored a second")
    parser.add_argument("--modes", default="idle,busy")
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL server to make scratch databases on"
    )
    args = parser.parse_args()
    if args.database_url:
        os.environ["TEST_DATABASE_URL"] = args.database_url
    print(f"# bench/freshness.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
          f"messages={args.messages} rate={args.rate}/s")  # fmt: skip
    print(
        f"{'deriver':>8} {'worst lag s':>12} {'median lag s':>13} {'caught up s':>12} {'write s':>8} {'found':>6}"
    )
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as work, scratch_database("rapport_fresh") as db_url:
            env = {
                "DB_CONNECTION_URI": db_url,
                "APP_LOG_LEVEL": "WARNING",
                "DERIVER_ENABLED": "true" if mode == "busy" else "false",
                "HEALTH_PROBE_INTERVAL_S": "0",
            }
            with rapport_serve(env, Path(work) / "home", startup_timeout_s=300) as url:
                result = asyncio.run(run_mode(mode, url, db_url, args))
        print(
            f"{mode:>8} {result['worst_lag_s']:>12.1f} {result['median_lag_s']:>13.1f} "
            f"{result['caught_up_after_last_s']:>12.1f} {result['write_s']:>8.1f} "
            f"{result['found']:>3}/{result['checked']:<2}",
            flush=True,
        )


if __name__ == "__main__":
    main()
