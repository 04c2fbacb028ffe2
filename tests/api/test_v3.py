"""The v3 API over real PostgreSQL: workspaces, peers, sessions with members, messages, and what v1 wrote
read back through v3 (and the other way)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from cluster.index_sync import drain
from models.llm.client import estimate_tokens
from pipelines.memory import Memory
from storage.index import MESSAGES
from tests.api.test_metrics import scrape, value

W = "/v3/workspaces"


async def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return {} if status == 204 else response.json()  # type: ignore[no-any-return]


async def test_workspaces_are_got_or_created_listed_updated_and_deleted(client: httpx.AsyncClient) -> None:
    made = await ok(await client.post(W, json={"id": "acme", "metadata": {"tier": 1}}), 201)
    assert made["id"] == "acme" and made["metadata"] == {"tier": 1} and made["configuration"] == {}
    again = await ok(await client.post(W, json={"id": "acme", "metadata": {"tier": 2}}))
    assert again["metadata"] == {"tier": 1}  # an existing workspace is returned as it is
    await ok(await client.post(W, json={"id": "beta"}), 201)

    page = await ok(await client.post(f"{W}/list", json={"filters": {"metadata": {"tier": 1}}}))
    assert [w["id"] for w in page["items"]] == ["acme"] and page["pages"] == 1
    page = await ok(await client.post(f"{W}/list?reverse=true"))
    assert [w["id"] for w in page["items"]] == ["beta", "acme"]

    configured = {"reasoning": {"enabled": False}, "summary": {"enabled": True}}
    updated = await ok(await client.put(f"{W}/acme", json={"configuration": configured}))
    assert updated["configuration"] == configured and updated["metadata"] == {"tier": 1}
    updated = await ok(await client.put(f"{W}/acme", json={"configuration": {"summary": {"enabled": False}}}))
    assert updated["configuration"] == {"reasoning": {"enabled": False}, "summary": {"enabled": False}}

    await ok(await client.post(f"{W}/acme/sessions", json={"id": "s1"}), 201)
    refused = await client.delete(f"{W}/acme")
    assert refused.status_code == 409 and "active session" in refused.json()["detail"]
    await ok(await client.delete(f"{W}/acme/sessions/s1"), 202)
    await ok(await client.delete(f"{W}/acme"), 202)
    page = await ok(await client.post(f"{W}/list"))
    assert [w["id"] for w in page["items"]] == ["beta"]


async def test_bad_ids_and_filters_are_422_with_their_location(client: httpx.AsyncClient) -> None:
    bad = await client.post(W, json={"id": "no spaces"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "id"]
    await ok(await client.post(W, json={"id": "w"}), 201)
    bad = await client.post(f"{W}/w/peers/list", json={"filters": {"created_at": {"gte": "yesterday"}}})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "filters", "created_at", "gte"]
    bad = await client.post(f"{W}/w/peers/list", json={"filters": {"colour": "red"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "filters", "colour"]
    bad = await client.post(
        f"{W}/w/sessions/s/messages",
        json={"messages": [{"peer_id": "ok"}, {"peer_id": "a b", "content": ""}]},
    )
    assert bad.status_code == 422


async def test_peers_are_got_or_created_with_their_metadata_and_listed(client: httpx.AsyncClient) -> None:
    await ok(await client.post(W, json={"id": "w"}), 201)
    alice = await ok(await client.post(f"{W}/w/peers", json={"id": "alice", "metadata": {"role": "u"}}), 201)
    assert alice == {**alice, "id": "alice", "workspace_id": "w", "metadata": {"role": "u"}}
    again = await ok(
        await client.post(f"{W}/w/peers", json={"id": "alice", "configuration": {"observe_me": False}})
    )
    assert again["configuration"] == {"observe_me": False} and again["metadata"] == {"role": "u"}
    await ok(await client.post(f"{W}/w/peers", json={"id": "bob", "metadata": {"role": "bot"}}), 201)
    page = await ok(await client.post(f"{W}/w/peers/list", json={"filters": {"metadata": {"role": "bot"}}}))
    assert [p["id"] for p in page["items"]] == ["bob"]
    page = await ok(await client.post(f"{W}/w/peers/list?size=1&page=2", json={}))
    assert [p["id"] for p in page["items"]] == ["bob"] and page["total"] == 2 and page["pages"] == 2
    updated = await ok(await client.put(f"{W}/w/peers/bob", json={"metadata": {"role": "agent"}}))
    assert updated["metadata"] == {"role": "agent"}
    missing = await client.post(f"{W}/nowhere/peers/list")
    assert missing.status_code == 404


async def test_sessions_have_members_with_their_configuration(client: httpx.AsyncClient) -> None:
    body = {
        "id": "chat",
        "metadata": {"topic": "trip"},
        "peers": {"alice": {"observe_me": True}, "bob": {"observe_others": True}},
        "configuration": {"summary": {"enabled": False}},
    }
    made = await ok(await client.post(f"{W}/w/sessions", json=body), 201)  # the workspace is made too
    assert made["configuration"] == {"summary": {"enabled": False}} and made["is_active"]
    members = await ok(await client.get(f"{W}/w/sessions/chat/peers"))
    assert [p["id"] for p in members["items"]] == ["alice", "bob"]
    assert await ok(await client.get(f"{W}/w/sessions/chat/peers/bob/config")) == {
        "observe_me": None,
        "observe_others": True,
    }
    await ok(await client.put(f"{W}/w/sessions/chat/peers/bob/config", json={"observe_me": False}), 204)
    assert await ok(await client.get(f"{W}/w/sessions/chat/peers/bob/config")) == {
        "observe_me": False,
        "observe_others": True,
    }

    await ok(await client.post(f"{W}/w/sessions/chat/peers", json={"carol": {}}))
    await ok(await client.request("DELETE", f"{W}/w/sessions/chat/peers", json=["alice", "nobody"]))
    members = await ok(await client.get(f"{W}/w/sessions/chat/peers"))
    assert [p["id"] for p in members["items"]] == ["bob", "carol"]
    await ok(await client.put(f"{W}/w/sessions/chat/peers", json={"alice": {"observe_others": False}}))
    members = await ok(await client.get(f"{W}/w/sessions/chat/peers"))
    assert [p["id"] for p in members["items"]] == ["alice"]

    sessions = await ok(await client.post(f"{W}/w/peers/bob/sessions", json={}))  # left, still listed
    assert [s["id"] for s in sessions["items"]] == ["chat"]
    too_many = {f"p{i}": {"observe_others": True} for i in range(11)}
    refused = await client.post(f"{W}/w/sessions/chat/peers", json=too_many)
    assert refused.status_code == 422 and "observe_others" in refused.text

    updated = await ok(await client.put(f"{W}/w/sessions/chat", json={"metadata": {"topic": "food"}}))
    assert updated["metadata"] == {"topic": "food"} and updated["configuration"] == {
        "summary": {"enabled": False}
    }
    listed = await ok(
        await client.post(f"{W}/w/sessions/list", json={"filters": {"metadata": {"topic": "food"}}})
    )
    assert [s["id"] for s in listed["items"]] == ["chat"]


async def test_messages_in_bulk_keep_their_order_senders_and_token_counts(client: httpx.AsyncClient) -> None:
    texts = [f"message number {i} ü" for i in range(100)]
    batch = [{"peer_id": "alice" if i % 2 else "bob", "content": t} for i, t in enumerate(texts)]
    batch[3]["metadata"] = {"mood": "happy"}
    made = await ok(await client.post(f"{W}/w/sessions/s/messages", json={"messages": batch}), 201)
    assert [m["content"] for m in made] == texts
    assert made[1] == {
        **made[1],
        "peer_id": "alice",
        "session_id": "s",
        "workspace_id": "w",
        "token_count": estimate_tokens(texts[1]),
    }
    members = await ok(await client.get(f"{W}/w/sessions/s/peers"))  # the senders joined the session
    assert sorted(p["id"] for p in members["items"]) == ["alice", "bob"]

    page = await ok(await client.post(f"{W}/w/sessions/s/messages/list?size=10", json={}))
    assert [m["content"] for m in page["items"]] == texts[:10] and page["total"] == 100
    alices = await ok(
        await client.post(f"{W}/w/sessions/s/messages/list", json={"filters": {"peer_id": "alice"}})
    )
    assert alices["total"] == 50 and {m["peer_id"] for m in alices["items"]} == {"alice"}
    happy = await ok(
        await client.post(
            f"{W}/w/sessions/s/messages/list", json={"filters": {"metadata": {"mood": "happy"}}}
        )
    )
    assert [m["content"] for m in happy["items"]] == [texts[3]]
    newest = await ok(await client.post(f"{W}/w/sessions/s/messages/list?reverse=true&size=1"))
    assert newest["items"][0]["content"] == texts[-1]

    one = await ok(await client.get(f"{W}/w/sessions/s/messages/{made[5]['id']}"))
    assert one["content"] == texts[5] and one["peer_id"] == "alice"
    changed = await ok(
        await client.put(f"{W}/w/sessions/s/messages/{made[5]['id']}", json={"metadata": {"a": 1}})
    )
    assert changed["metadata"] == {"a": 1} and changed["peer_id"] == "alice"
    assert (await client.get(f"{W}/w/sessions/other/messages/{made[5]['id']}")).status_code == 404

    too_long = await client.post(
        f"{W}/w/sessions/s/messages", json={"messages": [{"peer_id": "a", "content": "x" * 25_001}]}
    )
    assert too_long.status_code == 422
    dated = await ok(
        await client.post(
            f"{W}/w/sessions/s/messages",
            json={"messages": [{"peer_id": "alice", "content": "old", "created_at": "2020-01-02T03:04:05Z"}]},
        ),
        201,
    )
    assert dated[0]["created_at"].startswith("2020-01-02T03:04:05")


async def test_a_clone_copies_messages_and_members_and_a_delete_takes_everything(
    client: httpx.AsyncClient,
) -> None:
    batch = [{"peer_id": "alice", "content": f"m{i}"} for i in range(5)]
    made = await ok(await client.post(f"{W}/w/sessions/s/messages", json={"messages": batch}), 201)
    clone = await ok(await client.post(f"{W}/w/sessions/s/clone?message_id={made[2]['id']}"), 201)
    copied = await ok(await client.post(f"{W}/w/sessions/{clone['id']}/messages/list"))
    assert [m["content"] for m in copied["items"]] == ["m0", "m1", "m2"]
    assert {m["peer_id"] for m in copied["items"]} == {"alice"}
    members = await ok(await client.get(f"{W}/w/sessions/{clone['id']}/peers"))
    assert [p["id"] for p in members["items"]] == ["alice"]

    await ok(await client.delete(f"{W}/w/sessions/s"), 202)
    assert (await client.delete(f"{W}/w/sessions/s")).status_code == 404
    assert (await client.get(f"{W}/w/sessions/s/messages/{made[0]['id']}")).status_code == 404
    listed = await ok(await client.post(f"{W}/w/sessions/list"))
    assert [s["id"] for s in listed["items"]] == [clone["id"]]
    again = await ok(await client.post(f"{W}/w/sessions", json={"id": "s"}), 201)  # the name is free again
    assert again["id"] == "s"


async def test_what_v1_wrote_reads_back_through_v3_and_back(client: httpx.AsyncClient) -> None:
    app = await ok(await client.post("/v1/apps", json={"name": "shop"}))
    user = await ok(await client.post(f"/v1/apps/{app['id']}/users", json={"name": "ana"}))
    base = f"/v1/apps/{app['id']}/users/{user['id']}/sessions"
    session = await ok(await client.post(base, json={"metadata": {"v": 1}}))
    await ok(
        await client.post(
            f"{base}/{session['id']}/messages/batch",
            json={
                "messages": [{"content": "hi", "is_user": True}, {"content": "hello ana", "is_user": False}]
            },
        )
    )

    sessions = await ok(await client.post(f"{W}/shop/sessions/list"))
    assert [(s["id"], s["metadata"]) for s in sessions["items"]] == [(session["id"], {"v": 1})]
    members = await ok(await client.get(f"{W}/shop/sessions/{session['id']}/peers"))
    assert [p["id"] for p in members["items"]] == ["ana", "assistant"]
    messages = await ok(await client.post(f"{W}/shop/sessions/{session['id']}/messages/list"))
    assert [(m["peer_id"], m["content"]) for m in messages["items"]] == [
        ("ana", "hi"),
        ("assistant", "hello ana"),
    ]

    # v3 writes into the v1 session: the user's message is is_user, the assistant's is not
    v3_batch = [{"peer_id": "ana", "content": "bye"}, {"peer_id": "assistant", "content": "see you"}]
    await ok(
        await client.post(f"{W}/shop/sessions/{session['id']}/messages", json={"messages": v3_batch}), 201
    )
    v1 = await ok(await client.post(f"{base}/{session['id']}/messages/list", json={}))
    assert [(m["content"], m["is_user"]) for m in v1["items"]] == [
        ("hi", True),
        ("hello ana", False),
        ("bye", True),
        ("see you", False),
    ]

    # a v3 session of several peers is not a v1 session of any of them
    await ok(await client.post(f"{W}/shop/sessions/group/messages", json={"messages": v3_batch}), 201)
    v1_sessions = await ok(await client.post(f"{base}/list", json={}))
    assert [s["id"] for s in v1_sessions["items"]] == [session["id"]]


async def test_erasing_a_user_takes_what_they_said_in_every_session(client: httpx.AsyncClient) -> None:
    batch = [{"peer_id": "ana", "content": "mine"}, {"peer_id": "bo", "content": "theirs"}]
    await ok(await client.post(f"{W}/w/sessions/group/messages", json={"messages": batch}), 201)
    app = (await ok(await client.get("/v1/apps/get_or_create/w")))["id"]
    ana = (await ok(await client.get(f"/v1/apps/{app}/users/get_or_create/ana")))["id"]
    erased = await client.delete(f"/v1/apps/{app}/users/{ana}")
    assert erased.status_code in (200, 202, 204), erased.text
    left = await ok(await client.post(f"{W}/w/sessions/group/messages/list"))
    assert [(m["peer_id"], m["content"]) for m in left["items"]] == [("bo", "theirs")]
    members = await ok(await client.get(f"{W}/w/sessions/group/peers"))
    assert [p["id"] for p in members["items"]] == ["bo"]


async def test_search_covers_a_workspace_a_peer_or_a_session(
    client: httpx.AsyncClient, memory: Memory
) -> None:
    first = [
        {"peer_id": "ana", "content": "I adopted a grey cat named Miso"},
        {"peer_id": "bo", "content": "my cat sleeps all day", "metadata": {"pet": True}},
        {"peer_id": "ana", "content": "the weather in Lisbon is lovely"},
    ]
    await ok(await client.post(f"{W}/w/sessions/one/messages", json={"messages": first}), 201)
    second = [{"peer_id": "bo", "content": "a cat video made me laugh"}]
    await ok(await client.post(f"{W}/w/sessions/two/messages", json={"messages": second}), 201)
    await ok(await client.post(f"{W}/elsewhere/sessions/x/messages", json={"messages": second}), 201)
    while await drain(memory.writer):
        pass

    async def search(path: str, **body: object) -> list[tuple[str, str, str]]:
        found = await ok(await client.post(f"{W}/w{path}/search", json={"query": "cat", **body}))
        assert all(m["workspace_id"] == "w" for m in found)
        return [(m["session_id"], m["peer_id"], m["content"]) for m in found]

    everywhere = await search("")  # every message of the workspace, those about cats first
    cats = {first[0]["content"], first[1]["content"], second[0]["content"]}
    assert {c for _, _, c in everywhere[:3]} == cats and len(everywhere) == 4
    assert {(s, p) for s, p, _ in await search("/peers/bo")} == {("one", "bo"), ("two", "bo")}
    assert {s for s, _, _ in await search("/sessions/two")} == {"two"}
    assert [c for _, _, c in await search("", filters={"metadata": {"pet": True}})] == [first[1]["content"]]
    assert [p for _, p, _ in await search("", filters={"peer_id": "ana"})] == ["ana", "ana"]
    assert len(await search("", limit=1)) == 1
    refused = await client.post(f"{W}/w/search", json={"query": "cat", "filters": {"mood": "x"}})
    assert refused.status_code == 422


async def test_session_context_fits_a_summary_and_the_newest_messages_to_the_budget(
    client: httpx.AsyncClient,
) -> None:
    app = await ok(await client.post("/v1/apps", json={"name": "w"}))
    user = await ok(await client.post(f"/v1/apps/{app['id']}/users", json={"name": "ana"}))
    base = f"/v1/apps/{app['id']}/users/{user['id']}"
    session = await ok(await client.post(f"{base}/sessions", json={}))
    texts = [f"turn {i} " + "word " * 10 for i in range(10)]  # 57 characters: 17 tokens each
    batch = [{"content": t, "is_user": i % 2 == 0} for i, t in enumerate(texts)]
    made = await ok(
        await client.post(f"{base}/sessions/{session['id']}/messages/batch", json={"messages": batch})
    )
    summary_text = "Ana talked about turns."  # 7 tokens
    await ok(
        await client.post(
            f"{base}/metamessages",
            json={
                "metamessage_type": "honcho_chat_summary_short",
                "content": summary_text,
                "session_id": session["id"],
                "message_id": made[5]["id"],
            },
        )
    )
    context = f"{W}/w/sessions/{session['id']}/context"

    everything = await ok(await client.get(context, params={"summary": False}))
    assert [m["content"] for m in everything["messages"]] == texts and everything["summary"] is None
    assert {m["peer_id"] for m in everything["messages"]} == {"ana", "assistant"}

    tight = await ok(await client.get(context, params={"summary": False, "tokens": 40}))
    assert [m["content"] for m in tight["messages"]] == texts[-2:]  # 34 of 40 tokens

    summarised = await ok(await client.get(context, params={"tokens": 45}))
    assert summarised["summary"]["content"] == summary_text
    assert summarised["summary"]["summary_type"] == "honcho_chat_summary_short"
    assert summarised["summary"]["message_id"] == made[5]["id"] and summarised["summary"]["token_count"] == 7
    assert [m["content"] for m in summarised["messages"]] == texts[-2:]  # 45 - 7 leaves room for two
    wide = await ok(await client.get(context, params={"tokens": 1000}))
    assert [m["content"] for m in wide["messages"]] == texts[5:]  # from the message the summary ends at

    summaries = await ok(await client.get(f"{W}/w/sessions/{session['id']}/summaries"))
    assert summaries["short_summary"]["content"] == summary_text and summaries["long_summary"] is None
    refused = await client.get(context, params={"peer_perspective": "ana"})
    assert refused.status_code == 422
    assert (await client.get(context, params={"tokens": 100_001})).status_code == 422


async def test_conclusions_are_stored_listed_queried_and_deleted(client: httpx.AsyncClient) -> None:
    await ok(
        await client.post(
            f"{W}/w/sessions/chat/messages", json={"messages": [{"peer_id": "ana", "content": "hi"}]}
        ),
        201,
    )
    await ok(await client.post(f"{W}/w/peers", json={"id": "bo"}), 201)
    made = await ok(
        await client.post(
            f"{W}/w/conclusions",
            json={
                "conclusions": [
                    {
                        "content": "Ana lives in Lisbon",
                        "observer_id": "ana",
                        "observed_id": "ana",
                        "session_id": "chat",
                    },
                    {
                        "content": "Ana drinks green tea every morning",
                        "observer_id": "ana",
                        "observed_id": "ana",
                    },
                    {"content": "Ana seems shy", "observer_id": "bo", "observed_id": "ana"},
                ]
            },
        ),
        201,
    )
    assert [(c["observer_id"], c["observed_id"], c["session_id"], c["level"]) for c in made] == [
        ("ana", "ana", "chat", "explicit"),
        ("ana", "ana", None, "explicit"),
        ("bo", "ana", None, "explicit"),
    ]
    listed = await ok(await client.post(f"{W}/w/conclusions/list", json={}))
    assert [c["content"] for c in listed["items"]][0] == "Ana seems shy"  # newest first
    bos = await ok(await client.post(f"{W}/w/conclusions/list", json={"filters": {"observer_id": "bo"}}))
    assert [c["content"] for c in bos["items"]] == ["Ana seems shy"]
    chat = await ok(await client.post(f"{W}/w/conclusions/list", json={"filters": {"session_id": "chat"}}))
    assert [c["content"] for c in chat["items"]] == ["Ana lives in Lisbon"]

    query = {
        "query": "tea in the morning",
        "top_k": 1,
        "filters": {"observer_id": "ana", "observed_id": "ana"},
    }
    found = await ok(await client.post(f"{W}/w/conclusions/query", json=query))
    assert [c["content"] for c in found] == ["Ana drinks green tea every morning"]
    unnamed = await client.post(
        f"{W}/w/conclusions/query", json={"query": "tea", "filters": {"observer_id": "ana"}}
    )
    assert unnamed.status_code == 422
    missing_peer = await client.post(
        f"{W}/w/conclusions",
        json={"conclusions": [{"content": "x", "observer_id": "nobody", "observed_id": "ana"}]},
    )
    assert missing_peer.status_code == 404

    await ok(await client.delete(f"{W}/w/conclusions/{made[1]['id']}"), 204)
    assert (await client.delete(f"{W}/w/conclusions/{made[1]['id']}")).status_code == 404
    found = await ok(await client.post(f"{W}/w/conclusions/query", json=query))
    assert "Ana drinks green tea every morning" not in [c["content"] for c in found]

    # deleting the session they came from deletes them too
    await ok(await client.delete(f"{W}/w/sessions/chat"), 202)
    left = await ok(await client.post(f"{W}/w/conclusions/list", json={}))
    assert [c["content"] for c in left["items"]] == ["Ana seems shy"]


async def test_cards_representations_and_contexts_come_from_what_is_stored(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{W}/w/peers/ana/card")).status_code == 404  # no such workspace or peer
    card = await ok(
        await client.put(f"{W}/w/peers/ana/card", json={"peer_card": ["Name: Ana", "Lives in Lisbon"]})
    )
    assert card == {"peer_card": ["Name: Ana", "Lives in Lisbon"]}
    assert await ok(await client.get(f"{W}/w/peers/ana/card")) == card
    assert await ok(await client.get(f"{W}/w/peers/ana/card", params={"target": "bo"})) == {"peer_card": None}
    await ok(
        await client.put(
            f"{W}/w/peers/ana/card", params={"target": "bo"}, json={"peer_card": ["Bo: a friend"]}
        )
    )
    assert (await ok(await client.get(f"{W}/w/peers/ana/card", params={"target": "bo"})))["peer_card"] == [
        "Bo: a friend"
    ]

    conclusions = [
        {
            "content": f"Ana fact {i}",
            "observer_id": "ana",
            "observed_id": "ana",
            "session_id": "s" if i < 2 else None,
        }
        for i in range(5)
    ]
    await ok(await client.post(f"{W}/w/sessions", json={"id": "s"}), 201)
    await ok(await client.post(f"{W}/w/conclusions", json={"conclusions": conclusions}), 201)
    await ok(
        await client.post(
            f"{W}/w/conclusions",
            json={"conclusions": [{"content": "Bo is kind", "observer_id": "ana", "observed_id": "bo"}]},
        ),
        201,
    )

    whole = (await ok(await client.post(f"{W}/w/peers/ana/representation", json={})))["representation"]
    assert whole.startswith("## Explicit Observations\n\n[")
    assert [line.split("] ", 1)[1] for line in whole.splitlines()[2:]] == [f"Ana fact {i}" for i in range(5)]
    two = (await ok(await client.post(f"{W}/w/peers/ana/representation", json={"max_conclusions": 2})))[
        "representation"
    ]
    assert [line.split("] ", 1)[1] for line in two.splitlines()[2:]] == [
        "Ana fact 3",
        "Ana fact 4",
    ]  # the newest
    of_bo = (await ok(await client.post(f"{W}/w/peers/ana/representation", json={"target": "bo"})))[
        "representation"
    ]
    assert of_bo.endswith("] Bo is kind")
    in_s = (await ok(await client.post(f"{W}/w/peers/ana/representation", json={"session_id": "s"})))[
        "representation"
    ]
    assert in_s.count("Ana fact") == 2
    searched = await ok(
        await client.post(
            f"{W}/w/peers/ana/representation",
            json={"search_query": "Ana fact 0", "search_top_k": 1, "max_conclusions": 2},
        )
    )
    assert "Ana fact 0" in searched["representation"]

    context = await ok(await client.get(f"{W}/w/peers/ana/context", params={"target": "bo"}))
    assert context["peer_id"] == "ana" and context["target_id"] == "bo"
    assert context["peer_card"] == ["Bo: a friend"] and context["representation"].endswith("Bo is kind")

    await ok(
        await client.post(
            f"{W}/w/sessions/s/messages", json={"messages": [{"peer_id": "bo", "content": "hey"}]}
        ),
        201,
    )
    session_context = await ok(
        await client.get(f"{W}/w/sessions/s/context", params={"peer_target": "bo", "peer_perspective": "ana"})
    )
    assert session_context["peer_card"] == ["Bo: a friend"]
    assert session_context["peer_representation"].endswith("Bo is kind")
    assert [m["content"] for m in session_context["messages"]] == ["hey"]
    own = await ok(
        await client.get(f"{W}/w/sessions/s/context", params={"peer_target": "ana", "limit_to_session": True})
    )
    assert own["peer_representation"].count("Ana fact") == 2 and own["peer_card"] == [
        "Name: Ana",
        "Lives in Lisbon",
    ]


async def test_queue_status_counts_the_derivation_work_by_session(client: httpx.AsyncClient) -> None:
    assert await ok(await client.get(f"{W}/nowhere/queue/status")) == {
        "total_work_units": 0,
        "completed_work_units": 0,
        "in_progress_work_units": 0,
        "pending_work_units": 0,
        "sessions": None,
    }
    app = await ok(await client.post("/v1/apps", json={"name": "w"}))
    user = await ok(await client.post(f"/v1/apps/{app['id']}/users", json={"name": "ana"}))
    base = f"/v1/apps/{app['id']}/users/{user['id']}/sessions"
    first = await ok(await client.post(base, json={}))
    second = await ok(await client.post(base, json={}))
    for session, n in ((first, 3), (second, 2)):
        batch = [{"content": f"m{i}", "is_user": True} for i in range(n)]
        await ok(await client.post(f"{base}/{session['id']}/messages/batch", json={"messages": batch}))
    # a v3 session's messages are queued as v1's are
    await ok(
        await client.post(
            f"{W}/w/sessions/v3/messages", json={"messages": [{"peer_id": "ana", "content": "x"}]}
        ),
        201,
    )

    status = await ok(await client.get(f"{W}/w/queue/status"))
    assert (status["total_work_units"], status["pending_work_units"], status["completed_work_units"]) == (
        6,
        6,
        0,
    )
    assert {name: s["pending_work_units"] for name, s in status["sessions"].items()} == {
        first["id"]: 3,
        second["id"]: 2,
        "v3": 1,
    }
    one = await ok(await client.get(f"{W}/w/queue/status", params={"session_id": second["id"]}))
    assert one["total_work_units"] == 2 and one["sessions"] is None
    assert (await ok(await client.get(f"{W}/w/queue/status", params={"sender_id": "ana"})))[
        "total_work_units"
    ] == 6
    assert (await ok(await client.get(f"{W}/w/queue/status", params={"observer_id": "bo"})))[
        "total_work_units"
    ] == 0
    assert (
        await client.post(f"{W}/w/schedule_dream", json={"observer": "ana", "dream_type": "omni"})
    ).status_code == 204


def _pdf(text: str) -> bytes:
    """A one-page PDF showing ``text``."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


async def test_uploaded_files_become_messages(client: httpx.AsyncClient) -> None:
    upload = f"{W}/w/sessions/files/messages/upload"
    long_text = ("A sentence about the plan. " * 600 + "\n\n") * 2  # 32,404 characters, two paragraphs
    made = await ok(
        await client.post(
            upload,
            files={"file": ("notes.txt", long_text.encode(), "text/plain")},
            data={"peer_id": "ana", "metadata": '{"source": "notes"}'},
        ),
        201,
    )
    assert [len(m["content"]) for m in made] == [16_202, 16_202]  # cut after the first paragraph
    assert "".join(m["content"] for m in made) == long_text
    assert all(m["peer_id"] == "ana" and m["metadata"] == {"source": "notes"} for m in made)

    as_json = await ok(
        await client.post(
            upload, files={"file": ("d.json", b'{"a": [1, 2]}', "application/json")}, data={"peer_id": "ana"}
        ),
        201,
    )
    assert as_json[0]["content"] == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    pdf = await ok(
        await client.post(
            upload,
            files={"file": ("p.pdf", _pdf("Hello from a PDF"), "application/pdf")},
            data={"peer_id": "bo"},
        ),
        201,
    )
    assert pdf[0]["content"].startswith("[Page 1]\n") and "Hello from a PDF" in pdf[0]["content"]

    image = await client.post(
        upload, files={"file": ("x.png", b"\x89PNG", "image/png")}, data={"peer_id": "ana"}
    )
    assert image.status_code == 415 and "image/png" in image.json()["detail"]
    bad_meta = await client.post(
        upload, files={"file": ("n.txt", b"x", "text/plain")}, data={"peer_id": "ana", "metadata": "[1]"}
    )
    assert bad_meta.status_code == 422
    no_peer = await client.post(upload, files={"file": ("n.txt", b"x", "text/plain")})
    assert no_peer.status_code == 422


async def test_names_and_bodies_that_cannot_be_stored_are_refused_cleanly(client: httpx.AsyncClient) -> None:
    """What the fuzz run found: each was a 500, or accepted."""
    await ok(
        await client.post(
            f"{W}/w/sessions/s/messages", json={"messages": [{"peer_id": "ana", "content": "hi"}]}
        ),
        201,
    )
    assert (await client.get(f"{W}/w/peers/ana/context", params={"target": "a\x00"})).status_code == 404
    assert (await client.get(f"{W}/w%00/peers/ana/card")).status_code == 404
    assert (await client.post(f"{W}/w/sessions/s%00/messages/list")).status_code == 404
    epoch = {"messages": [{"peer_id": "ana", "content": "x", "created_at": 0}]}
    assert (await client.post(f"{W}/w/sessions/s/messages", json=epoch)).status_code == 422
    bad_peer = await client.post(f"{W}/w/sessions/s/peers", json={"a\x00": {}})
    assert bad_peer.status_code == 422
    emptied = await ok(await client.put(f"{W}/w/sessions/s/peers", json={}))
    assert emptied["id"] == "s" and (await ok(await client.get(f"{W}/w/sessions/s/peers")))["items"] == []
    malformed = await client.post(
        f"{W}/w/sessions/s/messages/upload",
        content=b"--b\r\nNone--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert malformed.status_code in (400, 422)


async def test_message_times_with_any_offset_are_stored_in_utc(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"peer_id": "ana", "content": "x", "created_at": "2020-06-30T13:51:04+16:39"}]}
    made = await ok(await client.post(f"{W}/w/sessions/s/messages", json=body), 201)
    assert made[0]["created_at"].startswith("2020-06-29T21:12:04")
    early = {"messages": [{"peer_id": "ana", "content": "x", "created_at": "0001-01-01T00:00:00+05:00"}]}
    assert (await client.post(f"{W}/w/sessions/s/messages", json=early)).status_code == 422


async def test_limits_and_metrics_cover_v3(
    client: httpx.AsyncClient, api_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A workspace spends its app's request budget through /v3 as through /v1 (one budget for both), and
    v3 requests are counted by route template."""
    app = await ok(await client.post("/v1/apps", json={"name": "noisy"}))
    await ok(await client.post(f"{W}/noisy/peers", json={"id": "ana"}), 201)
    await ok(await client.post(f"{W}/quiet/peers", json={"id": "ana"}), 201)
    async with api_client(limits={"app_requests_per_s": 0.5, "app_request_burst": 3}) as limited:
        before = await scrape(limited)
        assert (await limited.post(f"/v1/apps/{app['id']}/users/list", json={})).status_code == 200
        for _ in range(2):
            assert (await limited.post(f"{W}/noisy/peers/list")).status_code == 200
        refused = await limited.post(f"{W}/noisy/peers/list")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
        assert (await limited.post(f"{W}/quiet/peers/list")).status_code == 200, "its own budget"
        after = await scrape(limited)
    listed = {"method": "POST", "route": "/v3/workspaces/{workspace_id}/peers/list"}
    assert (
        value(after, "rapport_http_requests_total", **listed, status="200")
        - value(before, "rapport_http_requests_total", **listed, status="200")
        == 3
    )
    assert value(after, "rapport_http_requests_total", **listed, status="429") == 1


async def test_erasing_a_peer_takes_what_it_said_in_others_sessions_out_of_the_index(
    client: httpx.AsyncClient, memory: Memory
) -> None:
    app = await ok(await client.post("/v1/apps", json={"name": "w"}))
    bo = await ok(await client.post(f"/v1/apps/{app['id']}/users", json={"name": "bo"}))
    session = await ok(await client.post(f"/v1/apps/{app['id']}/users/{bo['id']}/sessions", json={}))
    said = [
        {"peer_id": "ana", "content": "ana speaks in bo's session"},
        {"peer_id": "bo", "content": "bo answers"},
    ]
    await ok(await client.post(f"{W}/w/sessions/{session['id']}/messages", json={"messages": said}), 201)
    while await drain(memory.writer):
        pass
    assert await memory.index.count(MESSAGES, {"app_id": app["id"]}) == 2
    ana = (await ok(await client.get(f"/v1/apps/{app['id']}/users/name/ana")))["id"]
    erased = await ok(await client.delete(f"/v1/apps/{app['id']}/users/{ana}"))
    assert erased["messages"] == 1
    while await drain(memory.writer):
        pass
    assert await memory.index.count(MESSAGES, {"app_id": app["id"]}) == 1
    left = await ok(await client.post(f"{W}/w/sessions/{session['id']}/messages/list"))
    assert [m["content"] for m in left["items"]] == ["bo answers"]
