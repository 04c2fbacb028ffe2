"""Honcho's current Python SDK (``honcho-ai`` 2.x) asks what Rapport learned from a conversation, with
the server deriving on its default local model: facts planted in a two-peer session come back through
the representation, a conclusion query, peer chat (whole and streamed), the session's context with
a peer target and the peer card; a dream scheduled through the SDK is run by the service's workers.

Run by tests/api/test_served_deriver.py in ``.venv-honcho3`` (the v1 client in Rapport's own venv has
the same import name), with the server's URL in ``RAPPORT_URL``. Each step prints its name; a failed
assertion exits non-zero. A fact counts as back when one of its words is: the model words its
conclusions and answers its own way.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
from honcho import Honcho
from honcho.api_types import SessionPeerConfig

URL = os.environ["RAPPORT_URL"]
DERIVED_WITHIN_S = 600
PLANTED = ["lisbon", "bakery", "rosa", "nurse", "porto", "cat"]


def knows(text: str | None, *words: str) -> bool:
    lowered = (text or "").lower()
    return any(word in lowered for word in (words or PLANTED))


def main() -> int:
    honcho = Honcho(
        base_url=URL, api_key="auth-is-off", workspace_id="sdk-memory", max_retries=0, timeout=600
    )
    ana, tutor = honcho.peer("ana"), honcho.peer("tutor")
    session = honcho.session("lesson")
    session.add_peers([ana, (tutor, SessionPeerConfig(observe_me=False))])  # the tutor is not derived
    session.add_messages(
        [
            ana.message("I just moved to Lisbon for a new job at a bakery."),
            tutor.message("That's exciting! How is it going so far?"),
            ana.message("Good, but I miss my sister Rosa. She is a nurse in Porto."),
            tutor.message("Do you get to see her often?"),
            ana.message("Every other weekend. Also, I'm allergic to cats, sadly."),
        ]
    )
    deadline = time.monotonic() + DERIVED_WITHIN_S
    while True:
        status = honcho.queue_status(session="lesson")
        if status.pending_work_units + status.in_progress_work_units == 0:
            break
        assert time.monotonic() < deadline, f"not derived within {DERIVED_WITHIN_S} s: {status}"
        time.sleep(2)
    print(f"ok   derived ({status.completed_work_units} of {status.total_work_units} units)", flush=True)

    representation = ana.representation()
    assert knows(representation), f"representation: {representation!r}"
    print(f"ok   representation: {representation!r}", flush=True)

    found = ana.conclusions.query("where does ana live and work", top_k=5)
    assert found and all(c.observer_id == c.observed_id == "ana" for c in found), found
    assert knows(" ".join(c.content for c in found)), [c.content for c in found]
    assert not list(tutor.conclusions.list()), "the tutor's observe_me is off: nothing is derived about it"
    print(f"ok   conclusion query: {[c.content for c in found]}", flush=True)

    answer = ana.chat("Where does Ana live, and where does she work?")
    assert isinstance(answer, str) and knows(answer, "lisbon", "bakery"), f"chat: {answer!r}"
    print(f"ok   peer chat: {answer!r}", flush=True)

    stream = ana.chat_stream("Who is Rosa?", session="lesson")
    streamed = "".join(chunk for chunk in stream)
    assert knows(streamed, "sister", "nurse", "porto"), f"streamed chat: {streamed!r}"
    print(f"ok   peer chat, streamed: {streamed!r}", flush=True)

    context = session.context(peer_target="ana", tokens=2000)
    assert knows(context.peer_representation), f"session context: {context.peer_representation!r}"
    assert [m.content for m in context.messages][-1].startswith("Every other weekend")
    print("ok   session context with a peer target", flush=True)

    card = ana.get_card()
    assert card and knows(" ".join(card)), f"the card the deriver derived: {card!r}"
    honcho.schedule_dream(observer="ana")
    deadline = time.monotonic() + DERIVED_WITHIN_S
    while True:
        dreams = httpx.get(f"{URL}/health", timeout=30).json()["dreams"]
        if dreams["pending"] + dreams["running"] == 0 and dreams["done"] + dreams["failed"] >= 1:
            break
        assert time.monotonic() < deadline, f"the dream did not finish within {DERIVED_WITHIN_S} s: {dreams}"
        time.sleep(2)
    assert dreams["failed"] == 0, dreams
    assert knows(ana.representation()), "what the dream left still holds the planted facts"
    print(f"ok   card and a dream: {card!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
