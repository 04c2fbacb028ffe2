"""Auth: scoped keys reach only their own resources, and learn nothing about anyone else's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from deployments.api.auth import decode_key, mint_key
from deployments.api.errors import APIError
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
        pytest.param(
            jwt.encode({"ad": True, "exp": "next tuesday"}, SECRET, algorithm="HS256"), id="exp-garbage"
        ),
        pytest.param(jwt.encode({"ad": True, "exp": True}, SECRET, algorithm="HS256"), id="exp-not-a-time"),
        pytest.param(jwt.encode({"ap": 7}, SECRET, algorithm="HS256"), id="id-not-a-string"),
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


# --- keys minted by Honcho v1.1.0 ---------------------------------------------------------------------
# Honcho signs `t` (a creation time string, "" in the admin key it prints at start-up) instead of `iat`,
# and `exp` as ISO-8601 text. A team moving over keeps AUTH_JWT_SECRET and the keys it handed out.


def honcho_key(**claims: object) -> str:
    """A key as Honcho v1.1.0 mints it: its claims, as given, signed HS256 with the shared secret."""
    return jwt.encode({"t": datetime.now().isoformat(), **claims}, SECRET, algorithm="HS256")


def iso(delta: timedelta, *, offset: bool = False) -> str:
    """An ISO-8601 time ``delta`` from now: naive UTC (as Honcho wrote it), or with its offset."""
    moment = datetime.now(UTC) + delta
    return moment.isoformat() if offset else moment.replace(tzinfo=None).isoformat()


async def test_honchos_startup_admin_key_is_an_admin_key(
    auth_client: httpx.AsyncClient, world: World
) -> None:
    h = bearer(jwt.encode({"t": "", "ad": True}, SECRET, algorithm="HS256"))
    listed = await auth_client.post("/v1/apps/list", headers=h)
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 2
    assert (await auth_client.post("/v1/apps", json={"name": "from-honcho"}, headers=h)).status_code == 200
    assert (await auth_client.post("/v1/keys", params={"app_id": world.app}, headers=h)).status_code == 200


@pytest.mark.parametrize("offset", [False, True], ids=["naive-utc", "with-offset"])
async def test_honcho_scoped_key_with_future_iso_exp_works_within_its_scope(
    auth_client: httpx.AsyncClient, world: World, offset: bool
) -> None:
    h = bearer(honcho_key(ap=world.app, us=world.user, exp=iso(timedelta(hours=1), offset=offset)))
    base = f"/v1/apps/{world.app}/users/{world.user}"
    assert (await auth_client.get(f"/v1/apps/{world.app}/users", headers=h)).json()["id"] == world.user
    created = await auth_client.post(
        f"{base}/sessions/{world.session}/messages", json={"content": "hi", "is_user": True}, headers=h
    )
    assert created.status_code == 200, created.text
    # ... and exactly as narrow as the same key minted by Rapport:
    rapport = bearer(await _key(auth_client, user_id=world.user))
    for path in (
        f"/v1/apps/{world.app}/users/{world.other_user}",
        f"/v1/apps/{world.other_app}/users/{world.other_app_user}",
        f"/v1/apps/{world.other_app}",
    ):
        theirs = await auth_client.put(path, json={"metadata": {}}, headers=h)
        ours = await auth_client.put(path, json={"metadata": {}}, headers=rapport)
        assert theirs.status_code == ours.status_code == 401, path
    assert (await auth_client.post("/v1/apps/list", headers=h)).status_code == 401


@pytest.mark.parametrize("offset", [False, True], ids=["naive-utc", "with-offset"])
async def test_honcho_key_with_past_iso_exp_is_refused_as_expired(
    auth_client: httpx.AsyncClient, world: World, offset: bool
) -> None:
    h = bearer(honcho_key(ap=world.app, us=world.user, exp=iso(-timedelta(minutes=1), offset=offset)))
    response = await auth_client.get(f"/v1/apps/{world.app}/users", headers=h)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_honcho_key_claims_this_server_does_not_know_are_ignored(
    auth_client: httpx.AsyncClient, world: World
) -> None:
    h = bearer(honcho_key(se=world.session, exp="", note="issued by the old deployment", v=2))
    base = f"/v1/apps/{world.app}/users/{world.user}/sessions/{world.session}"
    assert (await auth_client.post(f"{base}/messages/list", headers=h)).status_code == 200
    assert (
        await auth_client.post(f"/v1/apps/{world.app}/users/{world.user}/sessions/list", headers=h)
    ).status_code == 401


def test_an_iso_exp_without_offset_is_utc_whatever_the_servers_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # In New York, an hour ago in UTC reads as four hours ahead on the local clock: a server comparing
    # with local time would let this key through.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        an_hour_ago = honcho_key(ad=True, exp=iso(-timedelta(hours=1)))
        with pytest.raises(APIError, match="expired"):
            decode_key(SECRET, an_hour_ago)
        assert decode_key(SECRET, honcho_key(ad=True, exp=iso(timedelta(minutes=10)))).admin
    finally:
        monkeypatch.undo()
        time.tzset()
