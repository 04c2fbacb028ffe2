"""Answering questions about a user, on LoCoMo and at scale: the context endpoint and the dialectic chat.

    python -m bench.locomo_qa qa ../shared/data/locomo-dev.json [--conversations 1] [--sessions 2]
                                 [--questions 20] [--llm-base-url URL --llm-model NAME [--llm-api-key KEY]]
    python -m bench.locomo_qa scale [--messages 10000] [--facts 2000] [--queries 200]

qa starts `rapport serve` (the local model by default; with --llm-base-url any OpenAI-compatible server
for the deriver, the summaries and the dialectic), ingests the first --sessions sessions of the first
--conversations LoCoMo conversations twice, once with each speaker as the user, waits for the deriver,
then for each question of categories 1-4 whose evidence lies in those sessions:
- context evidence recall: asks `POST .../users/{user}/context` (the user is the speaker the question
  names) and reports the share of the question's evidence turns among the top 10 and 20 items, counting a
  fact as covering the turns it names as sources: messages only (the message search on its own,
  `POST .../users/{user}/search`, its first k), facts only (the context's first k facts), and both (the
  whole context asked with top_k k/2: at most k/2 facts and k/2 messages, the messages leaving out those
  its facts came from);
- answer quality: LoCoMo's token F1 of the dialectic's answer (`POST .../sessions/{id}/chat`) against the
  gold answer, per category, for the first --questions questions (taken in turn from each category);
- latency p50/p95 of both calls.
scale seeds one user with --messages messages and --facts facts (deriver off) and measures the context
call's latency over --queries questions, one at a time, with httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import string
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.locomo_retrieval import CATEGORIES, load, wait_for_index  # noqa: E402
from tests.db import scratch_database  # noqa: E402
from tests.served import rapport_serve  # noqa: E402

KS = (10, 20)
SOURCES = ("messages", "facts", "both")


# --- LoCoMo's answer score -----------------------------------------------------------------------------


def normalise_answer(text: str) -> list[str]:
    """LoCoMo's (SQuAD's) normalisation: lower case, no punctuation, no articles, single spaces. LoCoMo
    also Porter-stems the tokens; this does not (no NLTK here), which can only lower the score."""
    text = text.lower().replace(",", " ")
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the|and)\b", " ", text)
    return text.split()


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalise_answer(prediction), normalise_answer(gold)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


# --- the service ---------------------------------------------------------------------------------------


@contextmanager
def service(args: argparse.Namespace, env: dict[str, str]) -> Iterator[str]:
    os.environ["TEST_DATABASE_URL"] = args.database_url
    env = {"APP_LOG_LEVEL": "WARNING", **env}
    if getattr(args, "llm_base_url", None):
        env |= {"LLM_PROVIDER": "openai", "LLM_BASE_URL": args.llm_base_url, "LLM_MODEL": args.llm_model}
        if args.llm_api_key:
            env["LLM_API_KEY"] = args.llm_api_key
    with (
        tempfile.TemporaryDirectory() as home,
        scratch_database("rapport_bench_qa") as db_url,
        rapport_serve({**env, "DB_CONNECTION_URI": db_url}, Path(home), startup_timeout_s=300) as url,
    ):
        yield url


# --- qa --------------------------------------------------------------------------------------------------


def conversations_for(args: argparse.Namespace) -> list[dict]:
    """The first sessions of the first conversations, with the questions answerable from them."""
    chosen = []
    for conv in load(args.path)[: args.conversations]:
        sessions = conv["sessions"][: args.sessions]
        known = {t["dia_id"] for turns in sessions for t in turns}
        questions = [q for q in conv["questions"] if set(q["evidence"]) <= known]
        speakers = list(dict.fromkeys(t["speaker"] for turns in conv["sessions"] for t in turns))
        chosen.append({**conv, "sessions": sessions, "questions": questions, "speakers": speakers[:2]})
    return chosen


def ingest(http: httpx.Client, conversations: list[dict]) -> tuple[str, dict, dict[str, str]]:
    """Each conversation once per speaker as the user. Returns the app id, (conversation, speaker) ->
    (user id, last session id), and message id -> dia_id."""
    app = http.get("/v1/apps/get_or_create/locomo-qa").raise_for_status().json()["id"]
    users: dict[tuple[str, str], tuple[str, str]] = {}
    dia_of: dict[str, str] = {}
    for conv in conversations:
        for speaker in conv["speakers"]:
            name = f"{conv['id']}-{speaker}"
            user = http.get(f"/v1/apps/{app}/users/get_or_create/{name}").raise_for_status().json()["id"]
            session = ""
            for turns in conv["sessions"]:
                session = (
                    http.post(f"/v1/apps/{app}/users/{user}/sessions", json={})
                    .raise_for_status()
                    .json()["id"]
                )
                batch = [{"content": t["content"], "is_user": t["speaker"] == speaker,
                          "metadata": {"speaker": t["speaker"], "dia_id": t["dia_id"], "date": t["date"]}}
                         for t in turns]  # fmt: skip
                for start in range(0, len(batch), 100):
                    created = http.post(
                        f"/v1/apps/{app}/users/{user}/sessions/{session}/messages/batch",
                        json={"messages": batch[start : start + 100]},
                    ).raise_for_status().json()  # fmt: skip
                    dia_of |= {m["id"]: m["metadata"]["dia_id"] for m in created}
            users[(conv["id"], speaker)] = (user, session)
    return app, users, dia_of


def wait_for_deriver(http: httpx.Client, app: str, total: int) -> float:
    started, last = time.monotonic(), -1
    while True:
        status = http.get(f"/v1/apps/{app}/deriver/status").raise_for_status().json()
        if status["done"] + status["parked"] >= total:
            if status["parked"]:
                print(f"  warning: {status['parked']} messages parked (see `rapport deriver status`)")
            return time.monotonic() - started
        if status["done"] != last:
            last = status["done"]
            print(f"  {status['done']}/{total} derived after {time.monotonic() - started:.0f} s", flush=True)
        time.sleep(5)


def user_for(question: str, conv: dict) -> str:
    """The speaker the question is about: the first one it names (else the first speaker)."""
    named = [(question.find(s), s) for s in conv["speakers"] if s in question]
    return min(named)[1] if named else conv["speakers"][0]


def interleave(*lists: list) -> list:
    merged = []
    for i in range(max((len(x) for x in lists), default=0)):
        merged += [x[i] for x in lists if i < len(x)]
    return merged


def fact_turns(context: dict, dia_of: dict[str, str]) -> list[set[str]]:
    """The turns each of a context's facts covers: those it names as its sources."""
    return [{dia_of[i] for i in f["document"]["metadata"].get("message_ids", []) if i in dia_of}
            for f in context["facts"]]  # fmt: skip


def message_turns(hits: list[dict]) -> list[set[str]]:
    return [{hit["message"]["metadata"].get("dia_id")} for hit in hits]


def in_turns(questions: list[tuple[dict, dict]], n: int) -> list[tuple[dict, dict]]:
    """Up to n questions, taken in turn from each category."""
    by_category: dict[int, list] = defaultdict(list)
    for conv, qa in questions:
        by_category[qa["category"]].append((conv, qa))
    return interleave(*by_category.values())[:n]


def qa(args: argparse.Namespace) -> None:
    conversations = conversations_for(args)
    total = sum(len(turns) for c in conversations for turns in c["sessions"]) * 2
    questions = [(c, q) for c in conversations for q in c["questions"]]
    model = f"{args.llm_model} at {args.llm_base_url}" if args.llm_base_url else "the default local model"
    print(f"# bench/locomo_qa.py qa  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  {model}\n"
          f"{len(conversations)} conversation(s), first {args.sessions} session(s): {total} messages "
          f"(each speaker as the user once), {len(questions)} questions of categories 1-4")  # fmt: skip
    with service(args, {"DERIVER_BATCH_WAIT_S": "2"}) as url, httpx.Client(base_url=url, timeout=600) as http:
        started = time.monotonic()
        app, users, dia_of = ingest(http, conversations)
        derived = wait_for_deriver(http, app, total)
        wait_for_index(http)
        print(f"ingested and derived {total} messages in {time.monotonic() - started:.0f} s "
              f"({total / max(derived, 1e-9) * 60:.1f} messages/minute once stored)")  # fmt: skip

        recall: dict[tuple[str, int | str, int], list[float]] = defaultdict(list)
        context_ms: list[float] = []
        for conv, q in questions:
            user, _ = users[(conv["id"], user_for(q["question"], conv))]

            def context(top_k: int, question: str = q["question"], user: str = user) -> dict:
                return http.post(f"/v1/apps/{app}/users/{user}/context",
                                 json={"query": question, "top_k": top_k, "max_tokens": 32000}).raise_for_status().json()  # fmt: skip

            t0 = time.perf_counter()
            widest = context(max(KS))
            context_ms.append((time.perf_counter() - t0) * 1000)
            searched = http.post(f"/v1/apps/{app}/users/{user}/search",
                                 json={"query": q["question"], "top_k": max(KS)}).raise_for_status().json()  # fmt: skip
            alone, facts = message_turns(searched), fact_turns(widest, dia_of)
            for k in KS:
                # k items: the message search's first k; the context's first k facts; a context of k items
                # (top_k k/2: as many facts and messages at most, its messages leaving out those its facts
                # came from).
                half = context(k // 2)
                ranked = {
                    "messages": alone[:k],
                    "facts": facts[:k],
                    "both": fact_turns(half, dia_of) + message_turns(half["messages"]),
                }
                for source, items in ranked.items():
                    found = set().union(*items) if items else set()
                    share = len(found & set(q["evidence"])) / len(q["evidence"])
                    recall[(source, q["category"], k)].append(share)
                    recall[(source, "all", k)].append(share)

        f1: dict[int | str, list[float]] = defaultdict(list)
        chat_ms: list[float] = []
        for conv, q in in_turns(questions, args.questions):
            user, session = users[(conv["id"], user_for(q["question"], conv))]
            t0 = time.perf_counter()
            answer = http.post(f"/v1/apps/{app}/users/{user}/sessions/{session}/chat",
                               json={"queries": q["question"]})  # fmt: skip
            chat_ms.append((time.perf_counter() - t0) * 1000)
            content = answer.raise_for_status().json()["content"]
            score = token_f1(content, q["answer"])
            f1[q["category"]].append(score)
            f1["all"].append(score)
            if args.verbose:
                print(f"  [{CATEGORIES[q['category']]}] {q['question']}\n    gold: {q['answer']}\n"
                      f"    answer: {content.strip()[:300]}\n    F1 {score:.2f}")  # fmt: skip

    print(f"\ncontext evidence recall ({len(questions)} questions; a fact covers the turns it cites)")
    print(f"{'category':<12} {'n':>4} " + " ".join(f"{s + ' R@' + str(k):>14}" for s in SOURCES for k in KS))
    for category in (*CATEGORIES, "all"):
        n = len(recall[("both", category, KS[0])])
        if not n:
            continue
        cells = " ".join(f"{sum(recall[(s, category, k)]) / n:>14.3f}" for s in SOURCES for k in KS)
        print(f"{CATEGORIES.get(category, 'all') if category != 'all' else 'all':<12} {n:>4} {cells}")  # type: ignore[call-overload]
    print("[goal: both beats messages only]")
    print(f"\nanswer token F1 ({len(f1['all'])} questions, {model})")
    for category in (*CATEGORIES, "all"):
        if f1[category]:
            name = CATEGORIES.get(category, "all") if category != "all" else "all"  # type: ignore[call-overload]
            print(f"{name:<12} {len(f1[category]):>4} {sum(f1[category]) / len(f1[category]):.3f}")
    print(f"\nlatency over HTTP (ms): context p50 {percentile(context_ms, 0.5):.0f} p95 "
          f"{percentile(context_ms, 0.95):.0f}; chat p50 {percentile(chat_ms, 0.5):.0f} "
          f"p95 {percentile(chat_ms, 0.95):.0f}")  # fmt: skip


# --- scale -----------------------------------------------------------------------------------------------

TOPICS = ["hiking", "sourdough", "the violin", "chess", "marathons", "gardening", "photography", "sailing",
          "pottery", "jazz", "birdwatching", "climbing", "knitting", "astronomy", "cycling", "painting"]  # fmt: skip
PLACES = ["Lisbon", "Porto", "Berlin", "Osaka", "Quito", "Oslo", "Accra", "Denver", "Hanoi", "Perth"]
PEOPLE = ["Rosa", "Sam", "Ana", "Leo", "Mia", "Omar", "Ines", "Kai", "Zoe", "Ravi"]


def synthetic_fact(rng: random.Random, i: int) -> str:
    return rng.choice([
        f"Dana took up {rng.choice(TOPICS)} in {2015 + i % 10} with {rng.choice(PEOPLE)}.",
        f"Dana lived in {rng.choice(PLACES)} for {1 + i % 9} years and misses {rng.choice(TOPICS)} there.",
        f"Dana's friend {rng.choice(PEOPLE)} introduced her to {rng.choice(TOPICS)} (fact {i}).",
        f"Dana feels anxious about {rng.choice(TOPICS)} competitions in {rng.choice(PLACES)} (note {i}).",
    ])  # fmt: skip


def synthetic_message(rng: random.Random, i: int) -> str:
    return (f"Message {i}: last weekend I tried {rng.choice(TOPICS)} near {rng.choice(PLACES)} with "
            f"{rng.choice(PEOPLE)}, and we talked about {rng.choice(TOPICS)} for hours.")  # fmt: skip


async def seed_facts(db_url: str, app: str, user: str, facts: list[str]) -> None:
    """Facts as the deriver stores them, in the user's honcho collection, queued for the index (the
    collection is reserved, so not through the API)."""
    from rapport.settings import DBSettings
    from storage import collections, documents, outbox
    from storage.db import Database

    database = Database(db_url, DBSettings())
    try:
        async with database.transaction() as db:
            honcho = await collections.get_or_create_reserved(db, app, user)
            ids = []
            for i, fact in enumerate(facts):
                metadata = {"kind": "fact", "confidence": 1.0, "times_derived": 1, "source": f"seed-{i}"}
                row = await documents.create_document(
                    db, app, user, honcho.id, content=fact, metadata=metadata
                )
                ids.append(row.id)
            await outbox.enqueue_upserts(db, "document", ids)
    finally:
        await database.dispose()


UPKEEP_SETTLE_S = 40  # the last index upkeep's start (at most 10 s after the last write) and its run


def scale(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    print(f"# bench/locomo_qa.py scale  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
          f"one user, {args.messages} messages, {args.facts} facts, {args.queries} context calls (httpx, one at a time)")  # fmt: skip
    os.environ["TEST_DATABASE_URL"] = args.database_url
    with (
        tempfile.TemporaryDirectory() as home,
        scratch_database("rapport_bench_qa_scale") as db_url,
        # Index upkeep (compaction, the full-text index) runs 10 s after writes rather than 60 s, so that
        # it is over before the measurement starts: this measures the steady state of a quiet index.
        rapport_serve({"APP_LOG_LEVEL": "WARNING", "DB_CONNECTION_URI": db_url, "DERIVER_ENABLED": "false",
                       "VECTOR_STORE_MAINTAIN_INTERVAL_S": "10"}, Path(home), startup_timeout_s=300) as url,
        httpx.Client(base_url=url, timeout=600) as http,
    ):  # fmt: skip
        app = http.get("/v1/apps/get_or_create/qa-scale").raise_for_status().json()["id"]
        user = http.get(f"/v1/apps/{app}/users/get_or_create/dana").raise_for_status().json()["id"]
        started, session, per_session = time.monotonic(), "", 100
        for s in range(0, args.messages, per_session):
            session = (
                http.post(f"/v1/apps/{app}/users/{user}/sessions", json={}).raise_for_status().json()["id"]
            )
            batch = [{"content": synthetic_message(rng, i), "is_user": i % 2 == 0}
                     for i in range(s, min(s + per_session, args.messages))]  # fmt: skip
            http.post(f"/v1/apps/{app}/users/{user}/sessions/{session}/messages/batch",
                      json={"messages": batch}).raise_for_status()  # fmt: skip
        asyncio.run(seed_facts(db_url, app, user, [synthetic_fact(rng, i) for i in range(args.facts)]))
        waited = wait_for_index(http, timeout_s=3600)
        print(
            f"seeded in {time.monotonic() - started:.0f} s (the index caught up {waited:.0f} s after the last write)"
        )
        time.sleep(UPKEEP_SETTLE_S)

        queries = [
            f"What does Dana think about {rng.choice(TOPICS)} in {rng.choice(PLACES)}?"
            for _ in range(args.queries)
        ]
        latencies: dict[str, list[float]] = defaultdict(list)
        for with_session in (False, True):
            for i, query in enumerate(queries):
                body = {"query": query, **({"session_id": session} if with_session else {})}
                t0 = time.perf_counter()
                http.post(f"/v1/apps/{app}/users/{user}/context", json=body).raise_for_status()
                if i >= 10:  # the first calls warm the caches
                    latencies["with a session" if with_session else "user only"].append(
                        (time.perf_counter() - t0) * 1000
                    )
        for name, values in latencies.items():
            print(f"context latency, {name}: p50 {percentile(values, 0.5):.0f} ms  p95 {percentile(values, 0.95):.0f} ms  "
                  f"({len(values)} calls)  [goal: p50 under 100 ms, p95 under 250 ms]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("qa", help="context recall, answer F1 and latency on LoCoMo")
    q.add_argument("path", type=Path)
    q.add_argument("--conversations", type=int, default=1)
    q.add_argument("--sessions", type=int, default=2)
    q.add_argument("--questions", type=int, default=20, help="questions answered by the dialectic")
    q.add_argument("--llm-base-url", help="an OpenAI-compatible server (e.g. http://vllm:8000/v1)")
    q.add_argument("--llm-model", help="the served model's name (with --llm-base-url)")
    q.add_argument("--llm-api-key")
    q.add_argument("--verbose", action="store_true", help="print each question, gold answer and answer")
    s = commands.add_parser("scale", help="context latency for a user with many messages and facts")
    s.add_argument("--messages", type=int, default=10_000)
    s.add_argument("--facts", type=int, default=2_000)
    s.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    if args.command == "qa" and bool(args.llm_base_url) != bool(args.llm_model):
        parser.error("--llm-base-url and --llm-model go together")
    {"qa": qa, "scale": scale}[args.command](args)


if __name__ == "__main__":
    main()
