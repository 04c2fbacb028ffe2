"""Facts that change: after derivation and a dream, does the dialectic answer with the current fact?

    python -m bench.contradictions [--rounds 1]

Starts `rapport serve` on its defaults (the local Qwen2.5-Coder-1.5B, the MiniLM embedder) and, through
the v3 API, tells it twelve scripted stories, each a peer of its own: in one session the peer states a
fact (lives in Lisbon, works as a nurse, has a dog), in a later one that it changed (moved to Berlin,
became a developer, the dog died and a cat came). An assistant peer answers in both sessions and is not
observed. Then, for each peer:

1. the deriver derives both sessions (the clock is not the point here: it waits for the queue);
2. the peer's chat is asked the story's question (before any dream: the baseline);
3. a dream is scheduled for the peer (schedule_dream) and waited for;
4. the chat is asked again, and the peer's history (GET .../peers/{p}/history) read.

An answer counts as current when it names the new fact (one of the story's words for it). The history
counts when it holds a superseded conclusion naming the old fact. Printed: each story's answers, and the
share of current answers before and after the dream. Each round runs every story again, with fresh peers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.db import scratch_database
from tests.served import rapport_serve

WS = "contradictions"
OLD_DATE = "2025-02-10"
NEW_DATE = "2025-09-22"


@dataclass(frozen=True)
class Story:
    name: str
    before: str
    after: str
    question: str
    current: tuple[str, ...]  # words that name the new fact
    old: tuple[str, ...]  # words that name the old one


STORIES = [
    Story("ana", "I live in Lisbon and take the tram to work every day.",
          "I moved to Berlin last month, my new flat is near the river Spree.",
          "Where does ana live now?", ("berlin",), ("lisbon",)),
    Story("ben", "I work as a nurse at the city hospital, night shifts mostly.",
          "I quit nursing in the summer and now I work as a software developer at a startup.",
          "What is ben's job now?", ("developer", "software"), ("nurse",)),
    Story("cleo", "My boyfriend Tom and I are planning a trip to Rome together.",
          "Tom and I broke up in August, so I am single now.",
          "Is cleo in a relationship now?", ("single", "broke up", "not in a relationship", "no longer"), ("tom",)),
    Story("dan", "I have a dog called Rex, we walk every morning.",
          "Rex died in the spring; we adopted a cat called Luna since then.",
          "What pet does dan have now?", ("cat", "luna"), ("dog", "rex")),
    Story("eve", "I eat meat every day, steak is my favourite food.",
          "I became a vegetarian this year and stopped eating meat completely.",
          "Does eve eat meat now?", ("vegetarian", "no longer", "does not eat meat", "doesn't eat meat", "stopped"), ("steak",)),
    Story("finn", "I drive a red Toyota Corolla to work.",
          "I sold the Toyota and bought a Tesla Model 3, I drive that now.",
          "What car does finn drive now?", ("tesla",), ("toyota",)),
    Story("gia", "I study law at the University of Porto.",
          "I switched from law to medicine this semester at the same university.",
          "What does gia study now?", ("medicine",), ("law",)),
    Story("hugo", "I play football every weekend with my friends.",
          "I stopped playing football after a knee injury and took up swimming instead.",
          "What sport does hugo do now?", ("swim",), ("football",)),
    Story("iris", "I am learning Spanish with an app every evening.",
          "I gave up Spanish and started learning Japanese in September.",
          "Which language is iris learning now?", ("japanese",), ("spanish",)),
    Story("jon", "I work at Google in their Zurich office.",
          "I left Google and joined Microsoft in Dublin this autumn.",
          "Where does jon work now?", ("microsoft",), ("google",)),
    Story("kim", "I am a smoker, about a pack a day.",
          "I quit smoking completely six months ago.",
          "Does kim smoke now?", ("quit", "no longer", "does not smoke", "doesn't smoke", "stopped"), ("pack a day",)),
    Story("leo", "My favourite band is Coldplay, I saw them twice.",
          "These days my favourite band is Radiohead, I don't listen to Coldplay anymore.",
          "What is leo's favourite band now?", ("radiohead",), ("coldplay",)),
]  # fmt: skip

REPLIES = ("That sounds nice, tell me more.", "Thanks for letting me know, noted.")


def wait_for(check: str, condition: object, timeout_s: float = 3600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {check}")
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    os.environ.setdefault("TEST_DATABASE_URL", args.database_url)
    print(f"# bench/contradictions.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}  "
          f"{len(STORIES)} stories x {args.rounds} round(s)")  # fmt: skip
    before_ok = after_ok = history_ok = asked = 0
    with tempfile.TemporaryDirectory() as home, scratch_database("rapport_bench_contradictions") as db_url:
        env = {"DB_CONNECTION_URI": db_url, "DERIVER_BATCH_WAIT_S": "1", "DREAM_ENABLED": "false"}
        with rapport_serve(env, Path(home), startup_timeout_s=300) as url:
            http = httpx.Client(base_url=f"{url}/v3/workspaces/{WS}", timeout=900)
            assert httpx.post(f"{url}/v3/workspaces", json={"id": WS}).status_code in (200, 201)
            started = time.monotonic()
            for round_ in range(1, args.rounds + 1):
                peers = {story.name: f"{story.name}{round_}" for story in STORIES}
                for story in STORIES:
                    peer = peers[story.name]
                    for n, (text, date) in enumerate(
                        ((story.before, OLD_DATE), (story.after, NEW_DATE)), start=1
                    ):
                        session = f"{peer}-s{n}"
                        members = {peer: {}, "assistant": {"observe_me": False}}
                        assert http.post("/sessions", json={"id": session, "peers": members}).status_code in (
                            200,
                            201,
                        )
                        messages = [
                            {"peer_id": peer, "content": text, "metadata": {"date": date}},
                            {"peer_id": "assistant", "content": REPLIES[n - 1], "metadata": {"date": date}},
                        ]
                        made = http.post(f"/sessions/{session}/messages", json={"messages": messages})
                        assert made.status_code == 201, made.text

                def derived() -> bool:
                    status = http.get("/queue/status").json()
                    return bool(status["pending_work_units"] + status["in_progress_work_units"] == 0)

                wait_for("derivation", derived)
                print(f"round {round_}: derived after {time.monotonic() - started:.0f} s", flush=True)
                answers_before = {
                    s.name: http.post(f"/peers/{peers[s.name]}/chat", json={"query": s.question}).json()[
                        "content"
                    ]
                    or ""
                    for s in STORIES
                }
                for story in STORIES:
                    body = {"observer": peers[story.name], "dream_type": "omni"}
                    assert http.post("/schedule_dream", json=body).status_code == 204

                def dreamt() -> bool:
                    queue = httpx.get(f"{url}/health").json()["dreams"]
                    return bool(queue["pending"] + queue["running"] == 0)

                wait_for("the dreams", dreamt)
                print(f"round {round_}: dreamt after {time.monotonic() - started:.0f} s", flush=True)
                for story in STORIES:
                    peer = peers[story.name]
                    after = (
                        http.post(f"/peers/{peer}/chat", json={"query": story.question}).json()["content"]
                        or ""
                    )
                    history = http.get(f"/peers/{peer}/history").json()
                    conclusions = http.post(
                        "/conclusions/list", json={"filters": {"observer_id": peer}}
                    ).json()
                    is_now = any(w in after.lower() for w in story.current)
                    was_now = any(w in answers_before[story.name].lower() for w in story.current)
                    kept = any(any(w in h["content"].lower() for w in story.old) for h in history)
                    asked += 1
                    before_ok += was_now
                    after_ok += is_now
                    history_ok += kept
                    print(f"- {peer}: {story.question}")
                    print(f"    conclusions: {[c['content'] for c in conclusions['items']]}")
                    print(
                        f"    before the dream [{'current' if was_now else 'NOT current'}]: {answers_before[story.name]!r}"
                    )
                    print(f"    after the dream  [{'current' if is_now else 'NOT current'}]: {after!r}")
                    print(f"    history: {[(h['content'], h['replacement']) for h in history]}  [{'old fact kept' if kept else 'no old fact'}]")  # fmt: skip
    print(f"current answers before any dream: {before_ok}/{asked} ({before_ok / max(asked, 1):.0%})")
    print(
        f"current answers after the dream: {after_ok}/{asked} ({after_ok / max(asked, 1):.0%})  [goal: at least 90%]"
    )
    print(f"histories holding the old fact: {history_ok}/{asked}")
    print(f"minutes in all: {(time.monotonic() - started) / 60:.1f}")


if __name__ == "__main__":
    main()
