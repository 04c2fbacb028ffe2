"""GET /v1/apps/{app_id}/deriver/status and the deriver's line in /health."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from storage import derivation
from storage.db import Database
from tests.api.conftest import SECRET

STATES = {"pending", "in_progress", "retrying", "parked", "done", "oldest_pending_s"}


async def test_counts_per_app_user_and_session(client: httpx.AsyncClient, database: Database) -> None:
    app = (await client.post("/v1/apps", json={"name": "a"})).json()["id"]
    ana = (await client.post(f"/v1/apps/{app}/users", json={"name": "ana"})).json()["id"]
    bo = (await client.post(f"/v1/apps/{app}/users", json={"name": "bo"})).json()["id"]
    one = (await client.post(f"/v1/apps/{app}/users/{ana}/sessions", json={})).json()["id"]
    two = (await client.post(f"/v1/apps/{app}/users/{bo}/sessions", json={})).json()["id"]
    batch = {"messages": [{"content": f"m{i}", "is_user": True} for i in range(3)]}
    await client.post(f"/v1/apps/{app}/users/{ana}/sessions/{one}/messages/batch", json=batch)
    await client.post(
        f"/v1/apps/{app}/users/{bo}/sessions/{two}/messages", json={"content": "x", "is_user": True}
    )
    for _ in range(2):  # bo's message fails for good; ana's waits
        async with database.transaction() as db:
            held = await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=1000)
            assert held is not None
            if held.session_id == two:
                await derivation.fail(db, held, "broken", max_attempts=1)
            else:
                await derivation.release(db, held, delay_s=60)

    status = (await client.get(f"/v1/apps/{app}/deriver/status")).json()
    assert set(status) == STATES
    assert (status["pending"], status["parked"], status["done"]) == (3, 1, 0)
    assert status["oldest_pending_s"] >= 0
    mine = (await client.get(f"/v1/apps/{app}/deriver/status", params={"user_id": ana})).json()
    assert (mine["pending"], mine["parked"]) == (3, 0)
    theirs = await client.get(f"/v1/apps/{app}/deriver/status", params={"user_id": bo, "session_id": two})
    assert (theirs.json()["pending"], theirs.json()["parked"]) == (0, 1)

    health = (await client.get("/health")).json()
    assert health["deriver"]["pending"] == 3 and health["deriver"]["parked"] == 1


async def test_unknown_ids_and_a_session_without_its_user(client: httpx.AsyncClient) -> None:
    app = (await client.post("/v1/apps", json={"name": "a"})).json()["id"]
    assert (await client.get("/v1/apps/nope/deriver/status")).status_code == 404
    assert (await client.get(f"/v1/apps/{app}/deriver/status", params={"user_id": "nope"})).status_code == 404
    missing = await client.get(f"/v1/apps/{app}/deriver/status", params={"session_id": "s"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "user_id"]


async def test_a_user_key_sees_only_its_user(api_client: Callable[..., httpx.AsyncClient]) -> None:
    from deployments.api.auth import mint_key

    admin = {"Authorization": f"Bearer {mint_key(SECRET)}"}
    async with api_client(auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        app = (await client.post("/v1/apps", json={"name": "a"}, headers=admin)).json()["id"]
        ana = (await client.post(f"/v1/apps/{app}/users", json={"name": "ana"}, headers=admin)).json()["id"]
        bo = (await client.post(f"/v1/apps/{app}/users", json={"name": "bo"}, headers=admin)).json()["id"]
        session = (await client.post(f"/v1/apps/{app}/users/{bo}/sessions", json={}, headers=admin)).json()[
            "id"
        ]
        await client.post(
            f"/v1/apps/{app}/users/{bo}/sessions/{session}/messages",
            json={"content": "x", "is_user": True},
            headers=admin,
        )
        key = (await client.post("/v1/keys", params={"user_id": ana}, headers=admin)).json()["key"]
        as_ana = {"Authorization": f"Bearer {key}"}
        own = await client.get(f"/v1/apps/{app}/deriver/status", headers=as_ana)
        assert own.status_code == 200 and own.json()["pending"] == 0, "bo's message is not ana's to see"
        other = await client.get(f"/v1/apps/{app}/deriver/status", params={"user_id": bo}, headers=as_ana)
        assert other.status_code == 401
