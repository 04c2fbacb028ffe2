"""Metrics at /metrics (a plain process: prometheus_client) move as the service works. Ray's export of the
same metrics is checked against a real `rapport serve` in test_served_scenario.py."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.deriver import derivation_workers
from cluster.index_sync import drain
from models.llm import ChatMessage, LLMUnavailable
from models.llm.client import RetryPolicy, TransientError
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import messages
from storage.db import Database
from storage.scopes import Scope

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def make_session(client: httpx.AsyncClient) -> tuple[str, str, str]:
    app = (await client.post("/v1/apps", json={"name": "metrics"})).json()["id"]
    user = (await client.post(f"/v1/apps/{app}/users", json={"name": "ana"})).json()["id"]
    session = (await client.post(f"/v1/apps/{app}/users/{user}/sessions", json={})).json()["id"]
    return app, user, session


async def test_a_request_raises_its_routes_counter(client: httpx.AsyncClient) -> None:
    app, _, _ = await make_session(client)
    before = await scrape(client)
    assert (await client.get(f"/v1/apps/{app}/users/name/ana")).status_code == 200
    assert (await client.get(f"/v1/apps/{app}/users/name/nobody")).status_code == 404
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.request("BREW", "/v1/apps")).status_code in (404, 405)
    too_big = await client.post("/v1/apps", content=b"x" * (3 * 1024 * 1024))
    assert too_big.status_code == 413
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "GET", "route": "/v1/apps/{app_id}/users/name/{name}", "status": "200"}
    assert moved("rapport_http_requests_total", **ok) == 1
    assert moved("rapport_http_request_duration_seconds_count", **ok) == 1
    assert moved("rapport_http_request_duration_seconds_sum", **ok) > 0
    assert moved("rapport_http_requests_total", **(ok | {"status": "404"})) == 1
    assert moved("rapport_http_requests_total", method="GET", route="unmatched", status="404") == 1, (
        "a path no route matches is one series, not one per path"
    )
    assert moved("rapport_http_requests_total", method="POST", route="unmatched", status="413") == 1
    assert not any(dict(labels).get("method") == "BREW" for _, labels in after), "unknown methods are OTHER"
    assert not any(app in dict(labels).get("route", "") for _, labels in after), "ids never become labels"


async def test_backlogs_and_a_parked_item_move_their_gauges(
    client: httpx.AsyncClient, memory: Memory, database: Database
) -> None:
    app, user, session = await make_session(client)
    async with database.transaction() as db:  # stored without the API's inline indexing: the outbox waits
        await messages.create_messages(
            db, app, user, session, [{"content": "I live in Lisbon", "is_user": True}]
        )
    waiting = await scrape(client)
    gauges = ("queue_depth", "queue_oldest_age_seconds", "parked_items")
    for name in [f"rapport_derivation_{g}" for g in gauges] + [
        "rapport_index_lag_entries",
        "rapport_index_parked_entries",
    ]:
        assert (name, frozenset()) in waiting, f"{name} is not exported"
    assert value(waiting, "rapport_derivation_queue_depth") == 1
    assert value(waiting, "rapport_derivation_parked_items") == 0
    assert value(waiting, "rapport_derivation_queue_oldest_age_seconds") >= 0
    assert value(waiting, "rapport_index_lag_entries") == 1
    assert value(waiting, "rapport_index_parked_entries") == 0

    assert await drain(memory.writer) == 1  # type: ignore[arg-type]  # the in-process IndexSync
    settings = DeriverSettings(batch_wait_s=0, max_attempts=1, poll_interval_s=0.01)
    broken = ScriptedLLM(lambda prompt: '{"facts": [')  # never valid JSON, even after the repair
    worker = derivation_workers(Deriver(memory, broken, options=DeriverOptions.of(settings)), settings)[0]
    assert await worker.run_once() == "failed"
    after = await scrape(client)

    assert value(after, "rapport_derivation_parked_items") == 1
    assert value(after, "rapport_derivation_queue_depth") == 0
    assert value(after, "rapport_index_lag_entries") == 0
    assert (
        value(after, "rapport_derivation_items_parked_total")
        - value(waiting, "rapport_derivation_items_parked_total")
        == 1
    )
    batches = {"queue": "deriver", "result": "failed"}
    assert (
        value(after, "rapport_queue_batches_total", **batches)
        - value(waiting, "rapport_queue_batches_total", **batches)
        == 1
    )
    assert value(after, "rapport_embedding_batch_size_count", model="hashing") > value(
        waiting, "rapport_embedding_batch_size_count", model="hashing"
    )
    llm = {"provider": "scripted", "model": "double"}
    assert (
        value(after, "rapport_llm_calls_total", **llm) - value(waiting, "rapport_llm_calls_total", **llm) == 2
    )
    invalid = llm | {"kind": "invalid_output"}
    assert (
        value(after, "rapport_llm_errors_total", **invalid)
        - value(waiting, "rapport_llm_errors_total", **invalid)
        == 1
    )


async def test_llm_calls_tokens_errors_and_latency(client: httpx.AsyncClient) -> None:
    labels = {"provider": "scripted", "model": "metered"}
    before = await scrape(client)
    answering = ScriptedLLM(["one two three"], model="metered")
    await answering.complete([ChatMessage("user", "four words in all")])
    flaky = ScriptedLLM([TransientError("busy"), TransientError("busy")], model="metered")
    flaky.retry = RetryPolicy(attempts=2, base_delay_s=0)
    with pytest.raises(LLMUnavailable):
        await flaky.complete([ChatMessage("user", "hello")])
    after = await scrape(client)

    def moved(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert moved("rapport_llm_calls_total") == 3
    assert moved("rapport_llm_tokens_total", direction="prompt") == 4
    assert moved("rapport_llm_tokens_total", direction="completion") == 3
    assert moved("rapport_llm_errors_total", kind="transient") == 2
    assert moved("rapport_llm_errors_total", kind="unavailable") == 1
    assert moved("rapport_llm_request_duration_seconds_count") == 3


async def test_metrics_under_ray_point_at_the_agent(client: httpx.AsyncClient, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from rapport import metrics

    monkeypatch.setattr(metrics, "exported_via_ray", lambda: True)  # the route's view only
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert "ray_rapport_" in response.json()["detail"]


async def test_with_auth_on_metrics_take_an_admin_key(api_client) -> None:  # type: ignore[no-untyped-def]
    from deployments.api.auth import mint_key
    from tests.api.conftest import SECRET

    async with api_client(auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        assert (await client.get("/metrics")).status_code == 401
        app = (
            await client.post(
                "/v1/apps", json={"name": "m"}, headers={"Authorization": f"Bearer {mint_key(SECRET)}"}
            )
        ).json()["id"]
        app_key = {"Authorization": f"Bearer {mint_key(SECRET, Scope(app_id=app))}"}
        assert (await client.get("/metrics", headers=app_key)).status_code == 401
        admin = {"Authorization": f"Bearer {mint_key(SECRET)}"}
        assert (await client.get("/metrics", headers=admin)).status_code == 200
