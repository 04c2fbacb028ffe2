"""One request, bounded work (issue #27): a clone copies rows inside PostgreSQL, up to a cap, and leaves
the embedding of the copies to the index sync; a metadata change that leaves a message's indexed text
as it was does not send it to the embedder again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from cluster.index_sync import drain
from models.embedding import TextEmbedder
from models.embedding.hashing import HashingEmbedder
from pipelines.memory import Memory
from storage.db import Database
from storage.index import MESSAGES
from storage.sessions import CLONE_MAX
from tests.api.conftest import snapshot


class CountingEmbedder:
    """The test embedder, remembering every text it was asked to embed."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder(384)
        self.texts: list[str] = []

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return await self.inner.embed(texts)


@pytest.fixture
def embedder() -> TextEmbedder:
    return CountingEmbedder()


async def _session(client: httpx.AsyncClient) -> str:
    app = (await client.post("/v1/apps", json={"name": "bounded"})).json()["id"]
    user = (await client.post(f"/v1/apps/{app}/users", json={"name": "ana"})).json()["id"]
    session = (await client.post(f"/v1/apps/{app}/users/{user}/sessions", json={})).json()["id"]
    return f"/v1/apps/{app}/users/{user}/sessions/{session}"


async def _outbox(database: Database) -> list[str]:
    async with database.transaction() as db:
        rows = await db.execute(text("SELECT target_id FROM index_outbox ORDER BY id"))
        return [row[0] for row in rows]


async def _add(client: httpx.AsyncClient, path: str, contents: list[str]) -> list[dict[str, Any]]:
    batch = [{"content": c, "is_user": i % 2 == 0} for i, c in enumerate(contents)]
    response = await client.post(f"{path}/messages/batch", json={"messages": batch})
    assert response.status_code == 200, response.text
    return list(response.json())


async def test_a_clone_embeds_nothing_in_the_request_and_its_copies_are_indexed_later(
    client: httpx.AsyncClient, memory: Memory, database: Database
) -> None:
    path = await _session(client)
    originals = await _add(client, path, [f"turn {i} about kayaks, note n{i}q" for i in range(40)])
    await drain(memory.writer)
    embedder = memory.embedder
    assert isinstance(embedder, CountingEmbedder)
    embedder.texts.clear()

    response = await client.get(f"{path}/clone", params={"message_id": originals[29]["id"]})
    assert response.status_code == 200, response.text
    clone = response.json()
    assert set(clone) >= {"id", "is_active", "user_id", "metadata", "created_at"} and clone["is_active"]
    assert embedder.texts == [], "the request itself embeds nothing"

    clone_path = path.rsplit("/", 1)[0] + f"/{clone['id']}"
    copies = (await client.post(f"{clone_path}/messages/list", params={"size": 100})).json()["items"]
    assert [m["content"] for m in copies] == [f"turn {i} about kayaks, note n{i}q" for i in range(30)]
    assert [m["is_user"] for m in copies] == [m["is_user"] for m in originals[:30]]
    assert sorted(await _outbox(database)) == sorted(m["id"] for m in copies), "queued for the sync"

    await drain(memory.writer)
    assert len(embedder.texts) == 30, "each copy embedded once, in the background"
    assert await memory.index.count(MESSAGES, {"session_id": clone["id"]}) == 30
    found = await client.post(f"{clone_path}/search", json={"query": "n7q", "mode": "fulltext", "top_k": 3})
    assert found.status_code == 200, found.text
    assert found.json()[0]["message"]["id"] == copies[7]["id"]


async def test_a_clone_past_the_cap_is_refused_with_what_to_do_and_stores_nothing(
    client: httpx.AsyncClient, database: Database
) -> None:
    path = await _session(client)
    _, app, _, user, _, session = path.strip("/").split("/")[1:]
    async with database.transaction() as db:
        # Written in one statement: through the API this would take CLONE_MAX / 100 batches.
        await db.execute(
            text(
                "INSERT INTO messages (id, app_id, user_id, session_id, peer_id, is_user, content) "
                "SELECT 'm' || lpad(n::text, 20, '0'), :app, :user, :session, :user, true, 'turn ' || n "
                "FROM generate_series(1, :n) AS n ORDER BY n"
            ),
            {"app": app, "user": user, "session": session, "n": CLONE_MAX + 1},
        )
    before = await snapshot(database)

    refused = await client.get(f"{path}/clone")
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["query", "message_id"]
    assert str(CLONE_MAX) in error["msg"] and "message_id" in error["msg"]
    assert await snapshot(database) == before, "nothing stored, nothing queued"

    last_allowed = "m" + str(CLONE_MAX).zfill(20)
    allowed = await client.get(f"{path}/clone", params={"message_id": last_allowed, "deep_copy": True})
    assert allowed.status_code == 200, allowed.text
    async with database.transaction() as db:
        copied = await db.execute(
            text(
                "SELECT count(*) OVER (), content FROM messages WHERE session_id = :s "
                "ORDER BY seq DESC LIMIT 1"
            ),
            {"s": allowed.json()["id"]},
        )
        count, newest = copied.one()
    assert (count, newest) == (CLONE_MAX, f"turn {CLONE_MAX}"), "up to the cap, in order"


async def test_a_metadata_change_reindexes_a_message_only_when_its_indexed_text_changes(
    client: httpx.AsyncClient, memory: Memory, database: Database
) -> None:
    path = await _session(client)
    [message] = await _add(client, path, ["we met in Porto"])
    await drain(memory.writer)
    embedder = memory.embedder
    assert isinstance(embedder, CountingEmbedder)
    embedder.texts.clear()

    for metadata in ({"read": True}, {"read": True, "tags": ["trip"]}, {"read": True, "tags": ["trip"]}):
        response = await client.put(f"{path}/messages/{message['id']}", json={"metadata": metadata})
        assert response.status_code == 200 and response.json()["metadata"] == metadata
    assert await _outbox(database) == [], "nothing the index holds changed"
    await drain(memory.writer)
    assert embedder.texts == []

    for metadata, said in (
        ({"read": True, "speaker": "Zelda"}, "Zelda"),
        ({"read": True, "speaker": "Zelda", "date": "2021-05-01"}, "2021-05-01"),
        ({"read": True, "name": "Link", "timestamp": "yesterday"}, "Link (yesterday)"),
    ):
        response = await client.put(f"{path}/messages/{message['id']}", json={"metadata": metadata})
        assert response.status_code == 200
        assert await _outbox(database) == [message["id"]], metadata
        await drain(memory.writer)
        assert said in embedder.texts[-1] and len(embedder.texts) >= 1
    assert len(embedder.texts) == 3, "one embedding for each change of speaker or date"


async def test_the_end_of_a_message_too_long_to_embed_whole_is_still_found_by_its_words(
    client: httpx.AsyncClient, memory: Memory
) -> None:
    """What embedding.max_windows_per_text leaves out of the vector is still in the full-text index."""
    path = await _session(client)
    longest = ("the weather stayed mild and dry all week. " * 1200)[: 50_000 - 22] + " we sailed to Zanzibar"
    assert len(longest) == 50_000  # MESSAGE_CONTENT_MAX
    [message] = await _add(client, path, [longest])
    await drain(memory.writer)
    found = await client.post(f"{path}/search", json={"query": "Zanzibar", "mode": "fulltext", "top_k": 1})
    assert [hit["message"]["id"] for hit in found.json()] == [message["id"]]
