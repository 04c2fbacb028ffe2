"""Auth: scoped keys reach only their own resources, and learn nothing about anyone else's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from deployments.api.auth import decode_key, mint_key
from storage.scopes import Scope
from tests.api.conftest import SECRET

AUTH = {"auth": {"use_auth": True, "jwt_secret": SECRET}}
ADMIN = mint_key(SECRET)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    app: str
    user: str
    session: str
    collection: str
    other_user: str
    other_session: str
    other_app: str
    other_app_user: str


@pytest.fixture
async def auth_client(api_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(**AUTH) as c:
        yield c


@pytest.fixture
async def world(auth_client: httpx.AsyncClient) -> World:
    h = bearer(ADMIN)

    async def post(path: str, body: dict) -> str:
        response = await auth_client.post(path, json=body, headers=h)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    app = await post("/v1/apps", {"name": "a"})
    user = await post(f"/v1/apps/{app}/users", {"name": "u"})
    session = await post(f"/v1/apps/{app}/users/{user}/sessions", {})
    collection = await post(f"/v1/apps/{app}/users/{user}/collections", {"name": "c"})
    other_user = await post(f"/v1/apps/{app}/users", {"name": "u2"})
    other_session = await post(f"/v1/apps/{app}/users/{other_user}/sessions", {})
    other_app = await post("/v1/apps", {"name": "b"})
    other_app_user = await post(f"/v1/apps/{other_app}/users", {"name": "u"})
    return World(app, user, session, collection, other_user, other_session, other_app, other_app_user)


async def _key(client: httpx.AsyncClient, **scope: str) -> str:
    response = await client.post("/v1/keys", params=scope, headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    return response.json()["key"]


async def test_user_key_reaches_its_own_user(auth_client: httpx.AsyncClient, world: World) -> None:
    h = bearer(await _key(auth_client, user_id=world.user))
    base = f"/v1/apps/{world.app}/users/{world.user}"
    assert (await auth_client.get(f"/v1/apps/{world.app}/users", headers=h)).json()["id"] == world.user
    assert (await auth_client.put(base, json={"metadata": {"k": 1}}, headers=h)).status_code == 200
    assert (await auth_client.post(f"{base}/sessions/list", headers=h)).json()["total"] == 1
    created = await auth_client.post(
        f"{base}/sessions/{world.session}/messages", json={"content": "hi", "is_user": True}, headers=h
    )
    assert created.status_code == 200
    assert (await auth_client.post(f"{base}/collections/list", headers=h)).status_code == 200


async def test_user_key_cannot_touch_other_users_or_apps(
    auth_client: httpx.AsyncClient, world: World
) -> None:
    h = bearer(await _key(auth_client, user_id=world.user))
    w = world
    attempts = [
        ("GET", f"/v1/apps/{w.app}/users?user_id={w.other_user}", None),
        ("PUT", f"/v1/apps/{w.app}/users/{w.other_user}", {"name": "stolen"}),
        ("POST", f"/v1/apps/{w.app}/users/{w.other_user}/sessions", {}),
        ("POST", f"/v1/apps/{w.app}/users/{w.other_user}/sessions/list", None),
        ("POST", f"/v1/apps/{w.app}/users/{w.other_user}/sessions/{w.other_session}/messages/list", None),
        (
            "POST",
            f"/v1/apps/{w.app}/users/{w.other_user}/metamessages",
            {"metamessage_type": "x", "content": "y"},
        ),
        ("POST", f"/v1/apps/{w.app}/users", {"name": "new"}),  # app-level: needs an app key
        ("POST", f"/v1/apps/{w.app}/users/list", None),
        ("GET", f"/v1/apps/{w.app}/users/get_or_create/new", None),
        ("GET", f"/v1/apps?app_id={w.other_app}", None),
        ("PUT", f"/v1/apps/{w.other_app}", {"name": "stolen"}),
        ("GET", f"/v1/apps/{w.other_app}/users?user_id={w.other_app_user}", None),
        ("PUT", f"/v1/apps/{w.other_app}/users/{w.other_app_user}", {"name": "stolen"}),
        ("PUT", f"/v1/apps/{w.other_app}/users/{w.user}", {"name": "stolen"}),  # own user id, other app
        ("POST", "/v1/apps", {"name": "mine"}),
        ("POST", "/v1/apps/list", None),
        ("POST", "/v1/keys", None),
    ]
    for method, path, body in attempts:
        response = await auth_client.request(method, path, json=body, headers=h)
        assert response.status_code == 401, (method, path, response.text)

    admin = bearer(ADMIN)
    assert (await auth_client.get(f"/v1/apps/{w.app}/users?user_id={w.other_user}", headers=admin)).json()[
        "name"
    ] == "u2", "nothing was changed by the refused requests"
    assert (await auth_client.post("/v1/apps/list", headers=admin)).json()["total"] == 2


async def test_refusals_give_no_hint_of_existence(auth_client: httpx.AsyncClient, world: World) -> None:
    h = bearer(await _key(auth_client, user_id=world.user))
    pairs = [
        (f"/v1/apps/{world.app}/users/{world.other_user}", f"/v1/apps/{world.app}/users/nonexistent-user"),
        (f"/v1/apps/{world.other_app}", "/v1/apps/nonexistent-app"),
        (
            f"/v1/apps/{world.app}/users/{world.other_user}/sessions/{world.other_session}",
            f"/v1/apps/{world.app}/users/nonexistent-user/sessions/nonexistent-session",
        ),
    ]
    for existing, missing in pairs:
        a = await auth_client.put(existing, json={"metadata": {}}, headers=h)
        b = await auth_client.put(missing, json={"metadata": {}}, headers=h)
        assert (a.status_code, a.json()) == (b.status_code, b.json()) == (401, a.json())


async def test_session_and_collection_keys_are_narrow(auth_client: httpx.AsyncClient, world: World) -> None:
    base = f"/v1/apps/{world.app}/users/{world.user}"
    s = bearer(await _key(auth_client, session_id=world.session))
    assert (
        await auth_client.post(f"{base}/sessions/{world.session}/messages/list", headers=s)
    ).status_code == 200
    assert (await auth_client.get(f"{base}/sessions", headers=s)).json()[
        "id"
    ] == world.session  # from the key
    assert (await auth_client.post(f"{base}/sessions/list", headers=s)).status_code == 401
    assert (await auth_client.post(f"{base}/sessions", json={}, headers=s)).status_code == 401
    assert (
        await auth_client.get(f"{base}/collections?collection_id={world.collection}", headers=s)
    ).status_code == 401

    c = bearer(await _key(auth_client, collection_id=world.collection))
    assert (
        await auth_client.post(f"{base}/collections/{world.collection}/documents/list", headers=c)
    ).status_code == 200
    assert (
        await auth_client.post(f"{base}/sessions/{world.session}/messages/list", headers=c)
    ).status_code == 401


async def test_app_key_covers_its_app_only(auth_client: httpx.AsyncClient, world: World) -> None:
    h = bearer(await _key(auth_client, app_id=world.app))
    assert (await auth_client.get("/v1/apps", headers=h)).json()["id"] == world.app  # app from the key
    assert (await auth_client.post(f"/v1/apps/{world.app}/users/list", headers=h)).json()["total"] == 2
    assert (
        await auth_client.get(f"/v1/apps/{world.app}/users/get_or_create/newbie", headers=h)
    ).status_code == 200
    assert (await auth_client.post(f"/v1/apps/{world.other_app}/users/list", headers=h)).status_code == 401
    assert (await auth_client.get(f"/v1/apps/name/{'b'}", headers=h)).status_code == 401  # admin only


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            mint_key(SECRET, Scope("x"), expires_at=datetime.now(UTC) - timedelta(seconds=5)), id="expired"
        ),
        pytest.param("not-a-jwt", id="malformed"),
        pytest.param(mint_key("another-secret-" + "x" * 32), id="wrongly-signed"),
        pytest.param(jwt.encode({"ad": True}, SECRET, algorithm="HS256"), id="no-iat"),
        pytest.param(jwt.encode({"iat": 1}, SECRET, algorithm="HS256"), id="grants-nothing"),
        pytest.param(
            jwt.encode({"iat": 1, "ad": True}, SECRET + SECRET, algorithm="HS512"), id="other-algorithm"
        ),
        pytest.param(None, id="missing"),
    ],
)
async def test_bad_tokens_are_refused(auth_client: httpx.AsyncClient, token: str | None) -> None:
    headers = bearer(token) if token else {}
    response = await auth_client.post("/v1/apps/list", headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_key_says_so(auth_client: httpx.AsyncClient) -> None:
    key = mint_key(SECRET, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    response = await auth_client.post("/v1/apps/list", headers=bearer(key))
    assert "expired" in response.json()["detail"]


async def test_admin_mints_keys_that_expire(auth_client: httpx.AsyncClient, world: World) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    response = await auth_client.post(
        "/v1/keys", params={"user_id": world.user, "expires_at": expires.isoformat()}, headers=bearer(ADMIN)
    )
    key = decode_key(SECRET, response.json()["key"])
    assert (key.admin, key.app_id, key.user_id) == (False, world.app, world.user), "owners are filled in"
    assert jwt.decode(response.json()["key"], SECRET, algorithms=["HS256"])["exp"] == int(expires.timestamp())

    assert (await auth_client.post("/v1/keys", headers=bearer(ADMIN))).status_code == 422
    mismatched = await auth_client.post(
        "/v1/keys", params={"app_id": world.other_app, "user_id": world.user}, headers=bearer(ADMIN)
    )
    assert mismatched.status_code == 404


async def test_keys_route_is_off_without_auth(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/keys", params={"app_id": "x"})).status_code == 405


def test_cli_bootstraps_an_admin_key() -> None:
    env = {**os.environ, "AUTH_USE_AUTH": "true", "AUTH_JWT_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "rapport.cli", "keys", "create", "--admin"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert decode_key(SECRET, done.stdout.strip()).admin is True

    refused = subprocess.run(
        [sys.executable, "-m", "rapport.cli", "keys", "create"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "--admin" in refused.stderr
