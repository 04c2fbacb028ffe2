"""Per-app request rate limits: 429 with Retry-After past the budget and not before, one budget shared by
every API replica, and nothing stored by a refused request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from sqlalchemy import text

from deployments.api.auth import mint_key
from storage.db import Database
from tests.api.conftest import SECRET
from tests.api.test_metrics import scrape, value

# Slow refills, so that the test's own pace (a few requests a second on a busy box) cannot refill a bucket
# by surprise: 3 at once, then one every 2 s.
LIMITED = {"app_requests_per_s": 0.5, "app_request_burst": 3}


async def make_user(
    client: httpx.AsyncClient, name: str, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    app = (await client.post("/v1/apps", json={"name": name}, headers=headers)).json()["id"]
    user = (await client.post(f"/v1/apps/{app}/users", json={"name": "ana"}, headers=headers)).json()["id"]
    return app, user


async def test_429_past_the_budget_and_not_before(
    client: httpx.AsyncClient, api_client: Callable[..., httpx.AsyncClient], database: Database
) -> None:
    app, user = await make_user(client, "noisy")  # set up through an unlimited API
    other, _ = await make_user(client, "quiet")
    session = (await client.post(f"/v1/apps/{app}/users/{user}/sessions", json={})).json()["id"]
    async with api_client(limits=LIMITED) as limited:
        before = await scrape(limited)
        for _ in range(3):
            assert (await limited.get(f"/v1/apps/{app}/users/name/ana")).status_code == 200
        refused = await limited.post(
            f"/v1/apps/{app}/users/{user}/sessions/{session}/messages",
            json={"content": "hi", "is_user": True},
        )
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        assert "limits.app_requests_per_s" in refused.json()["detail"]
        assert (await limited.get(f"/v1/apps/{other}/users/name/ana")).status_code == 200, "its own budget"
        assert (await limited.get("/health")).status_code == 200, "no app, no limit"
        after = await scrape(limited)

        await asyncio.sleep(2.2)  # a token accrues every 2 s
        assert (await limited.get(f"/v1/apps/{app}/users/name/ana")).status_code == 200
        assert (await limited.get(f"/v1/apps/{app}/users/name/ana")).status_code == 429

    async with database.transaction() as db:
        assert (await db.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 0, (
            "refused: nothing stored"
        )
    assert (
        value(after, "rapport_rate_limited_requests_total", app_id=app)
        - value(before, "rapport_rate_limited_requests_total", app_id=app)
        == 1
    )


async def test_replicas_share_one_budget(
    client: httpx.AsyncClient, api_client: Callable[..., httpx.AsyncClient]
) -> None:
    app, _ = await make_user(client, "shared")
    path = f"/v1/apps/{app}/users/name/ana"
    limits = {"app_requests_per_s": 0.1, "app_request_burst": 4}
    async with api_client(limits=limits) as one, api_client(limits=limits) as two:
        for replica in (one, two, one, two):
            assert (await replica.get(path)).status_code == 200
        assert (await one.get(path)).status_code == 429
        assert (await two.get(path)).status_code == 429


async def test_requests_without_a_valid_key_spend_nothing(
    api_client: Callable[..., httpx.AsyncClient],
) -> None:
    admin = {"Authorization": f"Bearer {mint_key(SECRET)}"}
    auth = {"use_auth": True, "jwt_secret": SECRET}
    async with api_client(auth=auth, limits={"app_requests_per_s": 0.1, "app_request_burst": 2}) as limited:
        async with api_client(auth=auth) as setup:
            app, _ = await make_user(setup, "guarded", admin)
        path = f"/v1/apps/{app}/users/name/ana"
        for _ in range(5):
            assert (await limited.get(path)).status_code == 401
        assert [(await limited.get(path, headers=admin)).status_code for _ in range(3)] == [200, 200, 429]
        assert (await limited.get("/v1/apps/nope/users/name/ana", headers=admin)).status_code == 404


async def test_an_apps_own_limit_overrides_the_default(
    client: httpx.AsyncClient, api_client: Callable[..., httpx.AsyncClient]
) -> None:
    apps = {name: (await make_user(client, name))[0] for name in ("big", "small", "free", "other")}

    async def statuses(limited: httpx.AsyncClient, name: str, n: int) -> list[int]:
        return [(await limited.get(f"/v1/apps/{apps[name]}/users/name/ana")).status_code for _ in range(n)]

    limits = {
        "app_requests_per_s": 0.1,
        "app_request_burst": 1,
        "apps": {apps["big"]: {"request_burst": 3}, apps["free"]: {"requests_per_s": 0}},
    }
    async with api_client(limits=limits) as limited:
        assert await statuses(limited, "big", 4) == [200, 200, 200, 429]
        assert await statuses(limited, "small", 2) == [200, 429]
        assert await statuses(limited, "free", 5) == [200] * 5

    only_one = {"apps": {apps["other"]: {"requests_per_s": 0.1, "request_burst": 1}}}  # no default limit
    async with api_client(limits=only_one) as limited:
        assert await statuses(limited, "other", 2) == [200, 429]
        assert await statuses(limited, "small", 5) == [200] * 5
