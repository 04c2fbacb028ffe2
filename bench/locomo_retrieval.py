"""Retrieval quality on LoCoMo, through the HTTP API: recall@5/10/20 of each question's evidence turns.

    python -m bench.locomo_retrieval ../shared/data/locomo-dev.json [--url http://127.0.0.1:8000]

Ingests every conversation through the API (one user per conversation, one session per LoCoMo session,
each turn a message with speaker, dia_id and date in its metadata; a shared photo's caption is appended
to the turn's text as "[shares a photo: ...]"), waits for the index to catch up, then searches that
user's messages with each question of categories 1-4 in every mode, and reports the share of the
question's evidence turns found in the top 5, 10 and 20, per category and overall.

Without --url it starts `rapport serve` on a fresh database (the local Postgres, or
--database-url) and a temporary RAPPORT_HOME, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.db import scratch_database  # noqa: E402
from tests.served import rapport_serve  # noqa: E402

MODES = ("semantic", "fulltext", "hybrid")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
KS = (5, 10, 20)


def load(path: Path) -> list[dict]:
    """Conversations as sessions of turns, with their questions (evidence ids cleaned and checked)."""
    conversations = []
    for sample in json.loads(path.read_text()):
        conv = sample["conversation"]
        sessions, known = [], set()
        n = 1
        while f"session_{n}" in conv:
            date = conv[f"session_{n}_date_time"]
            turns = []
            for turn in conv[f"session_{n}"]:
                text = turn["text"]
                if turn.get("blip_caption"):
                    text += f" [shares a photo: {turn['blip_caption']}]"
                turns.append(
                    {"content": text, "speaker": turn["speaker"], "dia_id": turn["dia_id"], "date": date}
                )
                known.add(turn["dia_id"])
            sessions.append(turns)
            n += 1
        questions, skipped = [], 0
        for qa in sample["qa"]:
            if qa["category"] not in CATEGORIES:
                continue
            # A few evidence lists hold "D8:6; D9:17" or "D:11:26": split and repair what is recognisable.
            evidence = [e.strip().replace("D:", "D") for raw in qa["evidence"] for e in str(raw).split(";")]
            evidence = [e for e in evidence if e in known]
            if evidence:
                questions.append(
                    {"question": qa["question"], "category": qa["category"], "evidence": evidence,
                     "answer": str(qa.get("answer", ""))}
                )  # fmt: skip
            else:
                skipped += 1
        conversations.append(
            {"id": sample.get("sample_id", f"conv-{len(conversations)}"), "speaker_a": conv["speaker_a"],
             "sessions": sessions, "questions": questions, "skipped": skipped}
        )  # fmt: skip
    return conversations


def ingest(http: httpx.Client, conversations: list[dict]) -> dict[str, tuple[str, str]]:
    """Store every turn; returns conversation id -> (app id, user id)."""
    app = http.get("/v1/apps/get_or_create/locomo-bench").raise_for_status().json()["id"]
    users = {}
    for conv in conversations:
        user = http.post(f"/v1/apps/{app}/users", json={"name": conv["id"]}).raise_for_status().json()["id"]
        users[conv["id"]] = (app, user)
        for turns in conv["sessions"]:
            session = (
                http.post(f"/v1/apps/{app}/users/{user}/sessions", json={}).raise_for_status().json()["id"]
            )
            for start in range(0, len(turns), 100):
                batch = [
                    {
                        "content": t["content"],
                        "is_user": t["speaker"] == conv["speaker_a"],
                        "metadata": {"speaker": t["speaker"], "dia_id": t["dia_id"], "date": t["date"]},
                    }
                    for t in turns[start : start + 100]
                ]
                http.post(
                    f"/v1/apps/{app}/users/{user}/sessions/{session}/messages/batch", json={"messages": batch}
                ).raise_for_status()
    return users


def wait_for_index(http: httpx.Client, timeout_s: float = 900) -> float:
    started = time.monotonic()
    while (pending := http.get("/health").json()["index"]["pending"]) > 0:
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"the index still has {pending} entries to apply after {timeout_s}s")
        time.sleep(0.5)
    return time.monotonic() - started


def evaluate(http: httpx.Client, conversations: list[dict], users: dict[str, tuple[str, str]]) -> dict:
    recall: dict[tuple[str, int | str, int], list[float]] = defaultdict(list)
    latency: dict[str, list[float]] = defaultdict(list)
    for conv in conversations:
        app, user = users[conv["id"]]
        for qa in conv["questions"]:
            for mode in MODES:
                started = time.perf_counter()
                hits = (
                    http.post(
                        f"/v1/apps/{app}/users/{user}/search",
                        json={"query": qa["question"], "top_k": max(KS), "mode": mode},
                    )
                    .raise_for_status()
                    .json()
                )
                latency[mode].append((time.perf_counter() - started) * 1000)
                ranked = [h["message"]["metadata"]["dia_id"] for h in hits]
                for k in KS:
                    share = len(set(ranked[:k]) & set(qa["evidence"])) / len(qa["evidence"])
                    recall[(mode, qa["category"], k)].append(share)
                    recall[(mode, "all", k)].append(share)
    return {"recall": recall, "latency": latency}


def report(result: dict, conversations: list[dict]) -> None:
    recall, latency = result["recall"], result["latency"]
    questions = sum(len(c["questions"]) for c in conversations)
    skipped = sum(c["skipped"] for c in conversations)
    print(
        f"\n{questions} questions of categories 1-4 ({skipped} skipped: no evidence turn found in the data)"
    )
    print(f"{'mode':<10} {'category':<12} {'n':>4} " + " ".join(f"{'R@' + str(k):>6}" for k in KS))
    for mode in MODES:
        for category in (*CATEGORIES, "all"):
            n = len(recall[(mode, category, KS[0])])
            cells = " ".join(f"{sum(recall[(mode, category, k)]) / n:>6.3f}" for k in KS)
            name = CATEGORIES.get(category, "all") if isinstance(category, int) else "all"
            print(f"{mode:<10} {name:<12} {n:>4} {cells}")
    print("\nsearch latency over HTTP (ms): " + ", ".join(
        f"{mode} p50 {sorted(v)[len(v) // 2]:.1f} p95 {sorted(v)[int(0.95 * len(v))]:.1f}" for mode, v in latency.items()
    ))  # fmt: skip


@contextmanager
def target(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    os.environ["TEST_DATABASE_URL"] = args.database_url
    env = {"APP_LOG_LEVEL": "WARNING"}
    with (
        tempfile.TemporaryDirectory() as home,
        scratch_database("rapport_locomo") as db_url,
        rapport_serve({**env, "DB_CONNECTION_URI": db_url, "DERIVER_ENABLED": "false"}, Path(home)) as url,
    ):
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="locomo JSON (e.g. ../shared/data/locomo-dev.json)")
    parser.add_argument("--url", help="an already running Rapport; default: start one")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    conversations = load(args.path)
    turns = sum(len(t) for c in conversations for t in c["sessions"])
    print(
        f"# bench/locomo_retrieval.py  {time.strftime('%Y-%m-%d %H:%M')}  {len(conversations)} conversations, {turns} turns"
    )
    with target(args) as url, httpx.Client(base_url=url, timeout=120) as http:
        started = time.monotonic()
        users = ingest(http, conversations)
        ingested = time.monotonic() - started
        waited = wait_for_index(http)
        print(f"ingested {turns} messages in {ingested:.1f}s; the index caught up {waited:.1f}s later")
        report(evaluate(http, conversations, users), conversations)


if __name__ == "__main__":
    main()
