"""v3 keys: each opens what its narrowest claim names, v1 and v3 keys never open each other's routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from deployments.api.auth import decode_key, mint_key
from storage.scopes import Scope
from tests.api.conftest import SECRET

AUTH = {"auth": {"use_auth": True, "jwt_secret": SECRET}}
ADMIN = {"Authorization": f"Bearer {mint_key(SECRET)}"}
W = "/v3/workspaces"


@pytest.fixture
async def auth_client(api_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(**AUTH) as c:
        yield c


async def key(client: httpx.AsyncClient, **scope: str) -> dict[str, str]:
    response = await client.post("/v3/keys", params=scope, headers=ADMIN)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


async def test_keys_carry_names_and_need_a_workspace(auth_client: httpx.AsyncClient) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    response = await auth_client.post(
        "/v3/keys",
        params={"workspace_id": "w", "peer_id": "p", "expires_at": expires.isoformat()},
        headers=ADMIN,
    )
    claims = jwt.decode(response.json()["key"], SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["w"] == "w" and claims["p"] == "p" and isinstance(claims["exp"], str)
    assert decode_key(SECRET, response.json()["key"]).peer == "p"
    for params in ({"peer_id": "p"}, {}, {"workspace_id": "bad name"}):
        refused = await auth_client.post("/v3/keys", params=params, headers=ADMIN)
        assert refused.status_code == 422, params
    workspace_key = await key(auth_client, workspace_id="w")
    assert (
        await auth_client.post("/v3/keys", params={"workspace_id": "w"}, headers=workspace_key)
    ).status_code == 401


async def test_keys_are_refused_with_auth_off(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v3/keys", params={"workspace_id": "w"})).status_code == 405


async def test_a_workspace_key_makes_and_uses_its_workspace_only(auth_client: httpx.AsyncClient) -> None:
    mine = await key(auth_client, workspace_id="mine")
    assert (await auth_client.post(W, json={"id": "mine"}, headers=mine)).status_code == 201
    assert (await auth_client.post(W, json={"id": "yours"}, headers=mine)).status_code == 401
    assert (await auth_client.post(W, json={"id": "yours"}, headers=ADMIN)).status_code == 201
    assert (await auth_client.post(f"{W}/mine/peers", json={"id": "p"}, headers=mine)).status_code == 201
    assert (await auth_client.post(f"{W}/yours/peers", json={"id": "p"}, headers=mine)).status_code == 401
    assert (await auth_client.post(f"{W}/yours/peers/list", headers=mine)).status_code == 401
    assert (await auth_client.post(f"{W}/list", headers=mine)).status_code == 401  # admin only
    assert (await auth_client.post(f"{W}/mine/peers/list")).status_code == 401  # no key


async def test_v1_and_v3_keys_never_open_each_others_routes(auth_client: httpx.AsyncClient) -> None:
    app = (await auth_client.post("/v1/apps", json={"name": "w"}, headers=ADMIN)).json()["id"]
    v1_app_key = {"Authorization": f"Bearer {mint_key(SECRET, Scope(app_id=app))}"}
    v3_key = await key(auth_client, workspace_id="w")
    assert (
        await auth_client.post(f"/v1/apps/{app}/users/list", json={}, headers=v1_app_key)
    ).status_code == 200
    assert (await auth_client.post(f"/v1/apps/{app}/users/list", json={}, headers=v3_key)).status_code == 401
    assert (await auth_client.post(f"{W}/w/peers/list", headers=v3_key)).status_code == 200
    assert (await auth_client.post(f"{W}/w/peers/list", headers=v1_app_key)).status_code == 401
    assert (await auth_client.post(W, json={"id": "w"}, headers=v1_app_key)).status_code == 401
    mixed = jwt.encode({"ap": app, "w": "w"}, SECRET, algorithm="HS256")
    assert (
        await auth_client.post(f"{W}/w/peers/list", headers={"Authorization": f"Bearer {mixed}"})
    ).status_code == 401


async def test_a_peer_key_reads_the_sessions_it_is_in_and_nothing_else(
    auth_client: httpx.AsyncClient,
) -> None:
    batch = {"messages": [{"peer_id": "ana", "content": "hi"}, {"peer_id": "bo", "content": "yo"}]}
    assert (
        await auth_client.post(f"{W}/w/sessions/ours/messages", json=batch, headers=ADMIN)
    ).status_code == 201
    theirs = {"messages": [{"peer_id": "bo", "content": "secret"}]}
    assert (
        await auth_client.post(f"{W}/w/sessions/theirs/messages", json=theirs, headers=ADMIN)
    ).status_code == 201
    ana = await key(auth_client, workspace_id="w", peer_id="ana")

    assert (await auth_client.post(f"{W}/w/sessions/ours/messages/list", headers=ana)).status_code == 200
    assert (await auth_client.get(f"{W}/w/sessions/ours/peers", headers=ana)).status_code == 200
    assert (await auth_client.get(f"{W}/w/sessions/ours/peers/ana/config", headers=ana)).status_code == 200
    assert (await auth_client.get(f"{W}/w/sessions/ours/peers/bo/config", headers=ana)).status_code == 401
    assert (await auth_client.post(f"{W}/w/sessions/theirs/messages/list", headers=ana)).status_code == 401
    assert (
        await auth_client.post(f"{W}/w/sessions/ours/messages", json=batch, headers=ana)
    ).status_code == 401
    assert (
        await auth_client.put(f"{W}/w/peers/ana", json={"metadata": {"a": 1}}, headers=ana)
    ).status_code == 200
    assert (
        await auth_client.put(f"{W}/w/peers/bo", json={"metadata": {"a": 1}}, headers=ana)
    ).status_code == 401
    assert (await auth_client.post(f"{W}/w/peers/list", headers=ana)).status_code == 401
    assert (await auth_client.post(f"{W}/w/peers", json={"id": "ana"}, headers=ana)).status_code == 200
    assert (await auth_client.post(f"{W}/w/peers", json={"id": "eve"}, headers=ana)).status_code == 401

    # once ana leaves the session, her key no longer reads it
    left = await auth_client.request("DELETE", f"{W}/w/sessions/ours/peers", json=["ana"], headers=ADMIN)
    assert left.status_code == 200
    assert (await auth_client.post(f"{W}/w/sessions/ours/messages/list", headers=ana)).status_code == 401


async def test_a_session_key_opens_its_session_only(auth_client: httpx.AsyncClient) -> None:
    ours = await key(auth_client, workspace_id="w", session_id="ours")
    batch = {"messages": [{"peer_id": "ana", "content": "hi"}]}
    assert (await auth_client.post(f"{W}/w/sessions", json={"id": "ours"}, headers=ours)).status_code == 201
    assert (await auth_client.post(f"{W}/w/sessions", json={"id": "other"}, headers=ours)).status_code == 401
    assert (
        await auth_client.post(f"{W}/w/sessions/ours/messages", json=batch, headers=ours)
    ).status_code == 201
    assert (
        await auth_client.post(f"{W}/w/sessions/other/messages", json=batch, headers=ours)
    ).status_code == 401
    assert (await auth_client.post(f"{W}/w/peers/list", headers=ours)).status_code == 401
    assert (await auth_client.post(f"{W}/w/peers", json={"id": "eve"}, headers=ours)).status_code == 401
