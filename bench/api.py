"""API throughput and latency through Ray Serve, against the same FastAPI app under plain uvicorn.

    python -m bench.api [--database-url URL] [--duration 10] [--concurrency 1,16,64]
                        [--replicas 2] [--proxy haproxy|ray] [--max-ongoing 100]

Measures message create, message list (a page of 50 from a 100-message session) and user
get-or-create (2,000 names: creates, then gets) at each concurrency: requests/s and
p50/p95/p99 latency; and the same message create and list through /v3 (a message of a peer in a
two-peer session; the page of 50 with its senders' names), compared with /v1's. After the load it checks that every acknowledged message is in the database.
Each target gets a fresh database on the server at --database-url (default: the local Postgres).

The derivation workers are off (they would compete for the CPU); what storing a message costs for
derivation is the queue trigger, which `--derivation-queue on,off` measures by running each target with
the trigger enabled and then disabled (`--scenarios "message create"` keeps it to the creates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.db import scratch_database  # noqa: E402
from tests.served import free_port, side_ports, wait_healthy  # noqa: E402


@dataclass
class Result:
    target: str
    scenario: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def row(self) -> str:
        return (
            f"{self.target:<14} {self.scenario:<15} {self.concurrency:>4} {self.rps:>9.1f} "
            f"{self.pct(0.50):>8.1f} {self.pct(0.95):>8.1f} {self.pct(0.99):>8.1f} {self.errors:>6}"
        )


HEADER = f"{'target':<14} {'scenario':<15} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"


@contextmanager
def start_target(kind: str, db_url: str, work: Path, args: argparse.Namespace) -> Iterator[str]:
    """Start Rapport through `rapport serve` (Ray Serve) or plain uvicorn; yield its URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "AUTH_"))},
        "DB_CONNECTION_URI": db_url,
        "RAPPORT_HOME": str(work / "home"),
        "APP_LOG_LEVEL": "WARNING",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_worker_niceness": "0",
        "DERIVER_ENABLED": "false",
        **side_ports(),
    }
    if kind == "serve":
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        deployment = config["applications"][0]["deployments"][0]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = args.replicas
        deployment["max_ongoing_requests"] = args.max_ongoing
        deployment["ray_actor_options"]["num_cpus"] = 0
        deployment["logging_config"] = {"enable_access_log": False, "log_level": "WARNING"}
        config_path = work / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env["SERVE_PROXY"] = args.proxy
        cmd = [
            sys.executable,
            "-m",
            "rapport.cli",
            "serve",
            "--port",
            str(port),
            "--config",
            str(config_path),
        ]
    else:
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "deployments.api.app:asgi_app",
            "--port", str(port), "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
        ]  # fmt: skip
    log = work / f"{kind}.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()


async def _drive(
    call: Callable[[aiohttp.ClientSession], Awaitable[bool]], concurrency: int, seconds: float, result: Result
) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    ok = await call(http)
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if ok:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    result.errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - began


async def run_scenarios(target: str, url: str, args: argparse.Namespace) -> tuple[list[Result], set[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/apps/get_or_create/bench") as r:
            app_id = (await r.json())["id"]
        async with http.get(f"{url}/v1/apps/{app_id}/users/get_or_create/bench-user") as r:
            user_id = (await r.json())["id"]
        sessions = f"{url}/v1/apps/{app_id}/users/{user_id}/sessions"
        async with http.post(sessions, json={}) as r:
            session_id = (await r.json())["id"]
        # Lists read a session of a fixed size, so the figure does not depend on how many creates ran.
        async with http.post(sessions, json={}) as r:
            listed_session = (await r.json())["id"]
        turns = [
            {"content": f"turn {i}: a sentence of ordinary length", "is_user": i % 2 == 0} for i in range(100)
        ]
        async with http.post(f"{sessions}/{listed_session}/messages/batch", json={"messages": turns}) as r:
            assert r.status == 200, await r.text()
        # /v3: a session of two peers, written and read by names
        v3 = f"{url}/v3/workspaces/bench/sessions"
        async with http.post(v3, json={"id": "v3-written", "peers": {"bench-user": {}, "agent": {}}}) as r:
            assert r.status in (200, 201), await r.text()
        v3_turns = [
            {"peer_id": "bench-user" if i % 2 == 0 else "agent", "content": t["content"]}
            for i, t in enumerate(turns)
        ]
        async with http.post(f"{v3}/v3-listed/messages", json={"messages": v3_turns}) as r:
            assert r.status == 201, await r.text()
    messages = f"{sessions}/{session_id}/messages"
    listed = f"{sessions}/{listed_session}/messages/list?size=50&reverse=true"
    v3_messages = f"{url}/v3/workspaces/bench/sessions/v3-written/messages"
    v3_listed = f"{url}/v3/workspaces/bench/sessions/v3-listed/messages/list?size=50&reverse=true"
    v3_body = json.dumps(
        {
            "messages": [
                {"peer_id": "bench-user", "content": "I moved to Lisbon last spring and I love the food."}
            ]
        }
    )
    acked: set[str] = set()
    body = json.dumps({"content": "I moved to Lisbon last spring and I love the food.", "is_user": True})
    names = [f"user-{i}" for i in range(2000)]

    async def create(http: aiohttp.ClientSession) -> bool:
        async with http.post(messages, data=body, headers={"content-type": "application/json"}) as r:
            if r.status != 200:
                return False
            acked.add((await r.json())["id"])
            return True

    async def list_(http: aiohttp.ClientSession) -> bool:
        async with http.post(listed) as r:
            await r.read()
            return r.status == 200

    async def v3_create(http: aiohttp.ClientSession) -> bool:
        async with http.post(v3_messages, data=v3_body, headers={"content-type": "application/json"}) as r:
            if r.status != 201:
                return False
            acked.add((await r.json())[0]["id"])
            return True

    async def v3_list(http: aiohttp.ClientSession) -> bool:
        async with http.post(v3_listed) as r:
            await r.read()
            return r.status == 200

    async def get_or_create(http: aiohttp.ClientSession) -> bool:
        async with http.get(f"{url}/v1/apps/{app_id}/users/get_or_create/{random.choice(names)}") as r:
            await r.read()
            return r.status == 200

    async def settle() -> None:
        """Wait until the index has caught up: a scenario then pays for its own requests, not for the
        embedding of the one before (the index sync runs beside the API, on the same cores)."""
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                async with http.get(f"{url}/health") as r:
                    if (await r.json()).get("index", {}).get("pending", 0) == 0:
                        return
                await asyncio.sleep(0.5)

    chosen = [
        (scenario, call)
        for scenario, call in (
            ("message create", create),
            ("v3 msg create", v3_create),
            ("message list", list_),
            ("v3 msg list", v3_list),
            ("get-or-create", get_or_create),
        )
        if scenario in args.scenarios
    ]
    results = []
    for concurrency in args.concurrency:
        # The scenarios take turns, a slice of the duration each, --rounds times: what drifts during a
        # run (the index sync catching up, the tables growing) then weighs on each alike, and /v3 is
        # compared with /v1 under the same conditions.
        measured = {scenario: Result(target, scenario, concurrency) for scenario, _ in chosen}
        for scenario, call in chosen:
            await _drive(call, concurrency, args.warmup, Result(target, scenario, concurrency))  # warm-up
        for _ in range(args.rounds):
            for scenario, call in chosen:
                await settle()
                part = Result(target, scenario, concurrency)
                await _drive(call, concurrency, args.duration / args.rounds, part)
                measured[scenario].latencies_ms += part.latencies_ms
                measured[scenario].errors += part.errors
                measured[scenario].seconds += part.seconds
        for result in measured.values():
            print(result.row(), flush=True)
            results.append(result)
    return results, acked


def check_acknowledged(db_url: str, acked: set[str]) -> int:
    """How many acknowledged message ids are missing from the database (must be 0)."""
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM messages")}
    return len(acked - stored)


def set_derivation_trigger(db_url: str, *, enabled: bool) -> None:
    """Switch the trigger that queues every stored message for derivation (migration 0004)."""
    action = "ENABLE" if enabled else "DISABLE"
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"ALTER TABLE messages {action} TRIGGER messages_derive_on_insert")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--rounds", type=int, default=4, help="the scenarios take turns this many times at each concurrency"
    )
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--targets", default="serve,uvicorn", help="serve, uvicorn or both")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-ongoing", type=int, default=100)
    parser.add_argument(
        "--proxy", choices=["haproxy", "ray"], default="haproxy", help="serve.proxy for the run"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda s: s.split(","),
        default=["message create", "v3 msg create", "message list", "v3 msg list", "get-or-create"],
        help="comma-separated: message create, v3 msg create, message list, v3 msg list, get-or-create",
    )
    parser.add_argument(
        "--derivation-queue", default="on", help="on, off or on,off: the trigger that queues each message"
    )
    args = parser.parse_args()
    os.environ["TEST_DATABASE_URL"] = args.database_url  # where scratch databases are made

    label = f"serve[{args.proxy},r={args.replicas},mo={args.max_ongoing}]"
    print(f"# bench/api.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  {vars(args)}")
    print(HEADER)
    all_results: list[Result] = []
    runs = [(kind, queue) for kind in args.targets.split(",") for queue in args.derivation_queue.split(",")]
    for kind, queue in runs:
        with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench") as db_url:
            with start_target(kind, db_url, Path(tmp), args) as url:
                if queue == "off":
                    set_derivation_trigger(db_url, enabled=False)
                target = label if kind == "serve" else "uvicorn"
                if len(args.derivation_queue.split(",")) > 1:
                    target += f" q={queue}"
                results, acked = asyncio.run(run_scenarios(target, url, args))
            missing = check_acknowledged(db_url, acked)
            print(f"{kind}: {len(acked)} acknowledged message creates, {missing} missing from the database")
            if missing:
                raise SystemExit(f"{missing} acknowledged messages were lost")
            all_results.extend(results)

    if "," in args.derivation_queue:
        pairs = {(r.target.split(" q=")[0], r.scenario, r.concurrency): {} for r in all_results}
        for r in all_results:
            pairs[(r.target.split(" q=")[0], r.scenario, r.concurrency)][r.target.split(" q=")[1]] = r
        print("\nwith the derivation queue on / off, requests/s:")
        for (target, scenario, concurrency), pair in pairs.items():
            if {"on", "off"} <= set(pair):
                ratio = pair["on"].rps / pair["off"].rps
                print(
                    f"  {target:<30} {scenario:<15} c={concurrency:<3} {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"
                )
        return
    v3_pairs = (("v3 msg create", "message create"), ("v3 msg list", "message list"))
    ours = {(r.target, r.scenario, r.concurrency): r for r in all_results}
    if any(r.scenario.startswith("v3") for r in all_results):
        print("\n/v3 / /v1, requests/s:")
        for (target, scenario, concurrency), r in ours.items():
            for v3_name, v1_name in v3_pairs:
                if scenario == v3_name and (target, v1_name, concurrency) in ours:
                    ratio = r.rps / ours[(target, v1_name, concurrency)].rps
                    print(
                        f"  {target:<30} {v1_name:<15} c={concurrency:<3} {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"
                    )
    by_key = {(r.target == "uvicorn", r.scenario, r.concurrency): r for r in all_results}
    if any(k[0] for k in by_key) and any(not k[0] for k in by_key):
        print("\nRay Serve / plain uvicorn, requests/s:")
        for (is_uvicorn, scenario, concurrency), r in by_key.items():
            if not is_uvicorn and (True, scenario, concurrency) in by_key:
                base = by_key[(True, scenario, concurrency)]
                print(f"  {scenario:<15} c={concurrency:<3} {r.rps / base.rps:.2f}x")


if __name__ == "__main__":
    main()
