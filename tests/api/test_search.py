"""Document query and message search over HTTP (in-process app, real Postgres, LanceDB and model)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from cluster.index_sync import drain
from pipelines.memory import Memory


async def _post(client: httpx.AsyncClient, path: str, body: dict) -> dict | list:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_document_query_ranks_by_similarity(client: httpx.AsyncClient) -> None:
    app = (await _post(client, "/v1/apps", {"name": "a"}))["id"]
    user = (await _post(client, f"/v1/apps/{app}/users", {"name": "u"}))["id"]
    c = (await _post(client, f"/v1/apps/{app}/users/{user}/collections", {"name": "facts"}))["id"]
    docs = f"/v1/apps/{app}/users/{user}/collections/{c}/documents"
    tea = await _post(client, docs, {"content": "Mia drinks oolong tea", "metadata": {"kind": "food"}})
    await _post(client, docs, {"content": "Mia climbs mountains", "metadata": {"kind": "sport"}})

    found = await _post(client, f"{docs}/query", {"query": "favourite beverage", "top_k": 2})
    assert [d["id"] for d in found][0] == tea["id"] and len(found) == 2
    assert set(found[0]) == {"id", "content", "metadata", "created_at", "collection_id", "app_id", "user_id"}
    sport = await _post(client, f"{docs}/query", {"query": "favourite beverage", "filter": {"kind": "sport"}})
    assert [d["content"] for d in sport] == ["Mia climbs mountains"]


async def test_message_search_returns_messages_with_scores(
    api_client: Callable[..., httpx.AsyncClient], memory: Memory
) -> None:
    # The probes are reused for a minute; the backlog /health reports is read afresh on every call.
    async with api_client(health={"probe_interval_s": 60}) as client:
        await _message_search(client, memory)


async def _message_search(client: httpx.AsyncClient, memory: Memory) -> None:
    app = (await _post(client, "/v1/apps", {"name": "a"}))["id"]
    user = (await _post(client, f"/v1/apps/{app}/users", {"name": "u"}))["id"]
    session = (await _post(client, f"/v1/apps/{app}/users/{user}/sessions", {}))["id"]
    base = f"/v1/apps/{app}/users/{user}"
    turns = [
        "I just moved to Porto",
        "Do you like it?",
        "Yes, the bakeries are amazing",
        "My sister visits in June",
    ]
    created = await _post(
        client,
        f"{base}/sessions/{session}/messages/batch",
        {
            "messages": [
                {"content": t, "is_user": i % 2 == 0, "metadata": {"i": i}} for i, t in enumerate(turns)
            ]
        },
    )
    health = (await client.get("/health")).json()
    assert health["index"]["pending"] == 4, "the lag is visible before the sync runs"
    await drain(memory.writer)
    assert (await client.get("/health")).json()["index"]["pending"] == 0

    for mode in ("semantic", "fulltext", "hybrid"):
        hits = await _post(client, f"{base}/search", {"query": "moved to Porto", "mode": mode, "top_k": 2})
        assert hits[0]["message"]["id"] == created[0]["id"], mode
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:], strict=False)), "best first"
        assert set(hits[0]["message"]) == set(created[0])
    in_session = await _post(client, f"{base}/sessions/{session}/search", {"query": "sister", "top_k": 1})
    assert [h["message"]["content"] for h in in_session] == ["My sister visits in June"]
