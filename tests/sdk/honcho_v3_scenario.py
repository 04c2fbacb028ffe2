"""A scenario driven by Honcho's current Python SDK (``honcho-ai`` 2.x), run against a Rapport server:
workspaces, peers, sessions of several peers with their configuration, messages in bulk, filtered and
paged lists, clone and delete, search, context within a token budget, queue status, conclusions made
through the API, peer cards, representations, and scoped keys.

It runs in a venv of its own (``.venv-honcho3``, made by scripts/install): ``honcho-ai==0.2.0``, which
Rapport's own venv holds for the v1 tests, has the same import name. tests/api/test_sdk_v3.py starts
``rapport serve`` with auth on and runs this file there, with the server's URL and an admin key in
``RAPPORT_URL`` and ``RAPPORT_ADMIN_KEY``. Each step prints its name; a failed assertion exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

import httpx
from honcho import Honcho
from honcho.api_types import SessionPeerConfig

URL = os.environ["RAPPORT_URL"]
ADMIN = os.environ["RAPPORT_ADMIN_KEY"]


def client(api_key: str, workspace: str) -> Honcho:
    return Honcho(base_url=URL, api_key=api_key, workspace_id=workspace, max_retries=0, timeout=30)


def mint(**scope: str) -> str:
    response = httpx.post(f"{URL}/v3/keys", params=scope, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


def workspaces_and_peers() -> None:
    honcho = client(ADMIN, "sdk-shop")
    alice = honcho.peer("alice", metadata={"role": "customer"})
    assert alice.metadata == {"role": "customer"}
    honcho.peer("bob", metadata={"role": "agent"})
    honcho.peer("carol", metadata={"role": "customer"})
    assert [p.id for p in honcho.peers()] == ["alice", "bob", "carol"]
    customers = honcho.peers(filters={"metadata": {"role": "customer"}})
    assert [p.id for p in customers] == ["alice", "carol"]
    first = honcho.peers(size=2)
    assert [p.id for p in first.items] == ["alice", "bob"] and first.total == 3 and first.pages == 2
    alice.set_metadata({"role": "customer", "tier": "gold"})
    assert honcho.peer("alice").get_metadata() == {"role": "customer", "tier": "gold"}
    honcho.set_metadata({"region": "eu"})
    assert honcho.get_metadata() == {"region": "eu"}
    assert "sdk-shop" in list(honcho.workspaces())


def sessions_with_several_peers() -> None:
    honcho = client(ADMIN, "sdk-shop")
    session = honcho.session(
        "support-1",
        metadata={"channel": "chat"},
        peers=[
            ("alice", SessionPeerConfig(observe_me=True)),
            ("bob", SessionPeerConfig(observe_others=True)),
        ],
    )
    assert sorted(p.id for p in session.peers()) == ["alice", "bob"]
    config = session.get_peer_configuration("bob")
    assert config.observe_others is True
    session.set_peer_configuration("alice", SessionPeerConfig(observe_me=False))
    assert session.get_peer_configuration("alice").observe_me is False
    session.add_peers("carol")
    session.remove_peers("carol")
    assert sorted(p.id for p in session.peers()) == ["alice", "bob"]
    honcho.session("support-2", metadata={"channel": "email"})
    chats = honcho.sessions(filters={"metadata": {"channel": "chat"}})
    assert [s.id for s in chats] == ["support-1"]
    assert sorted(s.id for s in honcho.peer("bob").sessions()) == ["support-1"]


def messages_in_bulk() -> None:
    honcho = client(ADMIN, "sdk-shop")
    session = honcho.session("support-1")
    alice, bob = honcho.peer("alice"), honcho.peer("bob")
    batch = [(alice if i % 2 == 0 else bob).message(f"turn {i}", metadata={"turn": i}) for i in range(100)]
    stored = session.add_messages(batch)
    assert [m.content for m in stored] == [f"turn {i}" for i in range(100)]
    assert stored[1].peer_id == "bob" and stored[1].session_id == "support-1" and stored[1].token_count > 0
    page = session.messages(size=30)
    assert (
        page.total == 100 and page.pages == 4 and [m.content for m in page.items][:2] == ["turn 0", "turn 1"]
    )
    assert len(list(session.messages(size=30))) == 100  # iterating fetches the next pages
    bobs = session.messages(filters={"peer_id": "bob"})
    assert bobs.total == 50 and all(m.peer_id == "bob" for m in bobs.items)
    late = session.messages(filters={"metadata": {"turn": 99}})
    assert [m.content for m in late.items] == ["turn 99"]
    newest = session.messages(reverse=True, size=1)
    assert newest.items[0].content == "turn 99"
    one = session.get_message(stored[7].id)
    assert one.content == "turn 7"
    updated = session.update_message(stored[7].id, metadata={"flag": True})
    assert updated.metadata == {"flag": True}
    session.add_messages(honcho.peer("dave").message("hello, I'm new"))  # a new sender joins the session
    assert "dave" in [p.id for p in session.peers()]


def clone_and_delete() -> None:
    honcho = client(ADMIN, "sdk-shop")
    session = honcho.session("support-1")
    cut = session.messages(size=3).items[2]
    clone = session.clone(message_id=cut.id)
    assert [m.content for m in clone.messages()] == ["turn 0", "turn 1", "turn 2"]
    clone.delete()
    assert clone.id not in [s.id for s in honcho.sessions()]


def search_context_and_queue() -> None:
    honcho = client(ADMIN, "sdk-shop")
    session = honcho.session("support-3")
    alice, bob = honcho.peer("alice"), honcho.peer("bob")
    session.add_messages(
        [
            alice.message("my order of blue running shoes never arrived"),
            bob.message("sorry, let me check the courier for your shoes"),
            alice.message("thanks, it was order 4471"),
        ]
    )
    for _ in range(120):  # new messages are searchable once indexed: seconds
        found = session.search("shoes delivery", limit=2)
        if len(found) == 2:
            break
        time.sleep(0.5)
    assert {m.content for m in found} == {
        "my order of blue running shoes never arrived",
        "sorry, let me check the courier for your shoes",
    }, [m.content for m in found]
    assert all(m.peer_id == "alice" for m in alice.search("shoes", limit=5))
    everywhere = honcho.search("courier", limit=3)
    assert everywhere and everywhere[0].content == "sorry, let me check the courier for your shoes"
    context = session.context(tokens=25)  # the newest messages that fit 25 tokens (14 + 8; 13 more is over)
    assert [m.content for m in context.messages] == [
        "sorry, let me check the courier for your shoes",
        "thanks, it was order 4471",
    ], [m.content for m in context.messages]
    assert len(session.context().messages) == 3
    status = honcho.queue_status()
    assert (
        status.total_work_units
        == status.completed_work_units + status.in_progress_work_units + status.pending_work_units
    )


def conclusions_cards_and_representations() -> None:
    honcho = client(ADMIN, "sdk-shop")
    alice, bob = honcho.peer("alice"), honcho.peer("bob")
    made = alice.conclusions.create(
        [
            {"content": "Alice runs every morning", "session_id": "support-3"},
            {"content": "Alice lives in Porto"},
        ]
    )
    assert [c.content for c in made] == ["Alice runs every morning", "Alice lives in Porto"]
    bob.conclusions_of("alice").create([{"content": "Alice is patient with delays"}])
    assert {c.content for c in alice.conclusions.list()} == {
        "Alice runs every morning",
        "Alice lives in Porto",
    }
    assert [c.content for c in alice.conclusions.query("where does she live", top_k=1)] == [
        "Alice lives in Porto"
    ]
    assert [c.content for c in bob.conclusions_of("alice").list()] == ["Alice is patient with delays"]
    assert alice.conclusions.get(made[1].id).content == "Alice lives in Porto"
    alice.conclusions.delete(made[0].id)
    assert [c.content for c in alice.conclusions.list()] == ["Alice lives in Porto"]

    alice.set_card(["Name: Alice", "City: Porto"])
    assert alice.get_card() == ["Name: Alice", "City: Porto"]
    bob.set_card(["Alice: a regular customer"], target="alice")
    assert bob.get_card(target="alice") == ["Alice: a regular customer"]

    representation = alice.representation()
    assert representation.startswith("## Explicit Observations") and "Alice lives in Porto" in representation
    assert "Alice is patient with delays" in bob.representation(target="alice")
    context = bob.context(target="alice")
    assert context.peer_card == ["Alice: a regular customer"]
    session_context = honcho.session("support-3").context(peer_target="alice", peer_perspective="bob")
    assert session_context.peer_card == ["Alice: a regular customer"]
    assert "Alice is patient with delays" in (session_context.peer_representation or "")


def keys_with_auth_on() -> None:
    own = client(mint(workspace_id="sdk-keyed"), "sdk-keyed")
    own.peer("zoe")  # a workspace key makes its own workspace and what is in it
    own.session("room", peers=["zoe", "yan"]).add_messages(own.peer("zoe").message("hi"))
    try:
        client(mint(workspace_id="sdk-keyed"), "sdk-shop").peer("intruder")
    except Exception as exc:  # the SDK raises its AuthenticationError
        assert "401" in str(exc) or "permitted" in str(exc), exc
    else:
        raise AssertionError("a workspace key opened another workspace")
    zoe = client(mint(workspace_id="sdk-keyed", peer_id="zoe"), "sdk-keyed")
    assert [m.content for m in zoe.session("room").messages()] == ["hi"]


STEPS: list[Callable[[], None]] = [
    workspaces_and_peers,
    sessions_with_several_peers,
    messages_in_bulk,
    clone_and_delete,
    search_context_and_queue,
    conclusions_cards_and_representations,
    keys_with_auth_on,
]


def main() -> int:
    failed = 0
    for step in STEPS:
        try:
            step()
            print(f"ok   {step.__name__}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {step.__name__}", flush=True)
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
