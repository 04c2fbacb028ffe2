"""v3 webhooks: a workspace's endpoints, signed events delivered to a real HTTP receiver, queue.empty when
the deriver has done a session's work."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from aiohttp import web
from sqlalchemy import func, select, update

from cluster.deriver import derivation_workers
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.memory import Memory
from pipelines.webhooks import Webhooks
from rapport.settings import DeriverSettings, WebhookSettings
from storage import webhooks as storage_webhooks
from storage.tables import WebhookDelivery
from tests.api.test_metrics import scrape, value
from tests.pipelines.test_deriver import facts, is_extraction
from tests.served import free_port

W = "/v3/workspaces"
SECRET = "whsec-3f1c9a0e7b2d4c6f8a1e5b9d0c2f4a6e"


@dataclass
class Receiver:
    url: str
    got: list[tuple[bytes, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def events(self) -> list[dict]:
        return [json.loads(body) for body, _ in self.got]


@contextlib.asynccontextmanager
async def hook_server(
    port: int, hook: Callable[[web.Request], Awaitable[web.Response]]
) -> AsyncIterator[None]:
    """An HTTP server on ``port`` answering POST /hook with ``hook``."""
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An HTTP server that records what is posted to /hook (by name: "localhost" is not an IP literal)."""
    port = free_port()
    found = Receiver(f"http://localhost:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        found.got.append((await request.read(), request.headers.get("X-Honcho-Signature", "")))
        found.arrived.set()
        return web.Response(status=204)

    async with hook_server(port, hook):
        yield found


async def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return {} if status == 204 else response.json()  # type: ignore[no-any-return]


async def test_endpoints_are_added_listed_limited_and_deleted(
    api_client: Callable[..., httpx.AsyncClient],
) -> None:
    async with api_client(webhook={"max_endpoints": 2}) as client:
        assert (
            await client.post(f"{W}/w/webhooks", json={"url": "https://a.example/hook"})
        ).status_code == 404
        await ok(await client.post(W, json={"id": "w"}), 201)
        made = await ok(await client.post(f"{W}/w/webhooks", json={"url": "https://a.example/hook"}), 201)
        assert made["workspace_id"] == "w" and made["url"] == "https://a.example/hook"
        again = await ok(await client.post(f"{W}/w/webhooks", json={"url": "https://a.example/hook"}))
        assert again["id"] == made["id"]
        await ok(await client.post(f"{W}/w/webhooks", json={"url": "http://b.example:8080/x"}), 201)
        full = await client.post(f"{W}/w/webhooks", json={"url": "https://c.example/"})
        assert full.status_code == 409 and "webhook.max_endpoints" in full.json()["detail"]
        for bad in (
            "ftp://a.example/",
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http:///x",
            "x",
        ):
            refused = await client.post(f"{W}/w/webhooks", json={"url": bad})
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "url"], bad
        listed = await ok(await client.get(f"{W}/w/webhooks"))
        assert [e["url"] for e in listed["items"]] == ["https://a.example/hook", "http://b.example:8080/x"]
        await ok(await client.delete(f"{W}/w/webhooks/{made['id']}"), 204)
        assert (await client.delete(f"{W}/w/webhooks/{made['id']}")).status_code == 404
        assert (await ok(await client.get(f"{W}/w/webhooks")))["total"] == 1


async def test_a_test_event_is_signed_and_sent_only_with_a_secret(
    api_client: Callable[..., httpx.AsyncClient], receiver: Receiver
) -> None:
    async with api_client() as client:  # no secret: nothing is sent
        await ok(await client.post(W, json={"id": "w"}), 201)
        await ok(await client.post(f"{W}/w/webhooks", json={"url": receiver.url}), 201)
        assert (await client.get(f"{W}/w/webhooks/test")).json() is None
    await asyncio.sleep(0.5)
    assert receiver.got == []
    async with api_client(webhook={"secret": SECRET}) as client:
        assert (await client.get(f"{W}/w/webhooks/test")).status_code == 200
        await asyncio.wait_for(receiver.arrived.wait(), 10)
    body, signature = receiver.got[0]
    assert signature == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    event = json.loads(body)
    assert event["type"] == "test.event" and event["data"] == {"workspace_id": "w"} and event["timestamp"]
    assert body == json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


async def test_queue_empty_is_sent_when_a_sessions_work_is_done(
    client: httpx.AsyncClient, memory: Memory, receiver: Receiver
) -> None:
    app = await ok(await client.post("/v1/apps", json={"name": "w"}))
    user = await ok(await client.post(f"/v1/apps/{app['id']}/users", json={"name": "ana"}))
    base = f"/v1/apps/{app['id']}/users/{user['id']}/sessions"
    session = await ok(await client.post(base, json={}))
    turns = [{"content": "I live in Lisbon", "is_user": True}, {"content": "Nice!", "is_user": False}]
    await ok(await client.post(f"{base}/{session['id']}/messages/batch", json={"messages": turns}))
    await ok(await client.post(f"{W}/w/webhooks", json={"url": receiver.url}), 201)

    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.01)
    llm = ScriptedLLM(lambda prompt: facts(("Ana lives in Lisbon", [1])) if is_extraction(prompt) else "")
    webhooks = Webhooks(WebhookSettings(secret=SECRET))
    deriver = Deriver(memory, llm, options=DeriverOptions.of(settings))
    worker = derivation_workers(deriver, settings, webhooks=webhooks)[0]
    assert await worker.run_once() == "done"
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    await webhooks.close()
    assert receiver.events()[0]["type"] == "queue.empty"
    assert receiver.events()[0]["data"] == {
        "workspace_id": "w",
        "queue_type": "representation",
        "session_id": session["id"],
        "observer": "ana",
        "observed": "ana",
    }


async def test_derivation_parked_is_sent_when_work_is_parked(
    client: httpx.AsyncClient, memory: Memory, receiver: Receiver
) -> None:
    await ok(await client.post(f"{W}/w/sessions", json={"id": "s", "peers": {"ana": {}, "bo": {}}}), 201)
    sent = await ok(
        await client.post(
            f"{W}/w/sessions/s/messages", json={"messages": [{"peer_id": "ana", "content": "hi"}]}
        ),
        201,
    )
    await ok(await client.post(f"{W}/w/webhooks", json={"url": receiver.url}), 201)

    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.01, max_attempts=1)
    llm = ScriptedLLM(lambda prompt: "not JSON at all")  # every answer unreadable: the work is parked
    webhooks = Webhooks(WebhookSettings(secret=SECRET))
    deriver = Deriver(memory, llm, options=DeriverOptions.of(settings))
    worker = derivation_workers(deriver, settings, webhooks=webhooks)[0]
    assert await worker.run_once() == "failed"
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    await webhooks.close()
    event = receiver.events()[0]
    assert event["type"] == "derivation.parked"
    assert {k: v for k, v in event["data"].items() if k != "error"} == {
        "workspace_id": "w",
        "session_id": "s",
        "message_ids": [sent[0]["id"]],
    }
    assert event["data"]["error"].startswith("LLMOutputError")
    status = await ok(await client.get(f"{W}/w/queue/status"))
    assert (status["pending_work_units"], status["completed_work_units"]) == (0, 1)


@dataclass
class Flaky:
    """A receiver that answers ``statuses`` in turn (then 204), and can hold each request until released."""

    url: str
    statuses: list[int]
    got: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def flaky() -> AsyncIterator[Flaky]:
    port = free_port()
    found = Flaky(f"http://localhost:{port}/hook", [])

    async def hook(request: web.Request) -> web.Response:
        found.got.append((await request.read(), dict(request.headers)))
        found.arrived.set()
        await found.release.wait()
        return web.Response(status=found.statuses.pop(0) if found.statuses else 204)

    async with hook_server(port, hook):
        try:
            yield found
        finally:
            found.release.set()  # before the server stops: it waits for the requests it holds


async def deliveries(memory: Memory) -> list[tuple[str, int, str | None]]:
    async with memory.database.transaction() as db:
        rows = await db.execute(
            select(WebhookDelivery.status, WebhookDelivery.attempts, WebhookDelivery.last_error).order_by(
                WebhookDelivery.seq
            )
        )
        return [(r.status, r.attempts, r.last_error) for r in rows]


async def due_now(memory: Memory) -> None:
    async with memory.database.transaction() as db:
        await db.execute(update(WebhookDelivery).values(not_before=func.now()))


async def test_deliveries_are_retried_with_backoff_across_restarts_then_marked_failed(
    api_client: Callable[..., httpx.AsyncClient], memory: Memory, flaky: Flaky
) -> None:
    flaky.release.set()
    flaky.statuses = [500, 503]
    settings = {"secret": SECRET, "attempts": 3, "retry_base_s": 60}
    async with api_client(webhook=settings) as client:
        await ok(await client.post(W, json={"id": "w"}), 201)
        await ok(await client.post(f"{W}/w/webhooks", json={"url": flaky.url}), 201)
        await ok(await client.get(f"{W}/w/webhooks/test"))
        await client._transport.app.state.webhooks.close()  # type: ignore[attr-defined]
    assert await deliveries(memory) == [("pending", 1, "HTTP 500")], "kept, due again after the backoff"

    # a new process (a restart): nothing is due before the backoff; after it, the next try
    restarted = Webhooks(WebhookSettings(**settings))
    assert await restarted.deliver_due(memory.database) == 0
    await due_now(memory)
    assert await restarted.deliver_due(memory.database) == 1
    assert await deliveries(memory) == [("pending", 2, "HTTP 503")]
    await due_now(memory)
    assert await restarted.deliver_due(memory.database) == 1
    assert await deliveries(memory) == [("delivered", 3, None)]
    bodies = {body for body, _ in flaky.got}
    assert len(flaky.got) == 3 and len(bodies) == 1, "the same body, fixed when the event happened"
    ids = {headers["X-Rapport-Delivery"] for _, headers in flaky.got}
    assert len(ids) == 1, "one delivery id to deduplicate by"
    signature = hmac.new(SECRET.encode(), bodies.pop(), hashlib.sha256).hexdigest()
    assert all(headers["X-Honcho-Signature"] == signature for _, headers in flaky.got)

    flaky.statuses = [500, 500, 500]
    async with api_client() as probe:
        before = value(await scrape(probe), "rapport_webhooks_total", event="test.event", outcome="failed")
    async with memory.database.transaction() as db:
        event = await storage_webhooks.test_event(db, "w")
        assert await restarted.record(db, event) == 1
    for _ in range(3):
        await due_now(memory)
        await restarted.deliver_due(memory.database)
    assert (await deliveries(memory))[-1] == ("failed", 3, "HTTP 500")
    async with api_client() as probe:
        after = value(await scrape(probe), "rapport_webhooks_total", event="test.event", outcome="failed")
    assert after == before + 1
    await restarted.deliver_due(memory.database)
    assert len(flaky.got) == 6, "a failed delivery is not tried again"


async def test_an_endpoint_that_hangs_never_holds_up_derivation(
    client: httpx.AsyncClient, memory: Memory, flaky: Flaky
) -> None:
    await ok(await client.post(f"{W}/w/sessions", json={"id": "s", "peers": {"ana": {}}}), 201)
    await ok(
        await client.post(
            f"{W}/w/sessions/s/messages", json={"messages": [{"peer_id": "ana", "content": "hi"}]}
        ),
        201,
    )
    await ok(await client.post(f"{W}/w/webhooks", json={"url": flaky.url}), 201)
    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.01)
    llm = ScriptedLLM(lambda prompt: facts(("ana says hi", [1])) if is_extraction(prompt) else "")
    webhooks = Webhooks(WebhookSettings(secret=SECRET))
    worker = derivation_workers(
        Deriver(memory, llm, options=DeriverOptions.of(settings)), settings, webhooks=webhooks
    )[0]
    assert await worker.run_once() == "done"  # while the endpoint has not answered
    await asyncio.wait_for(flaky.arrived.wait(), 10)
    assert await deliveries(memory) == [("pending", 1, None)], "claimed, still out"
    flaky.release.set()
    await webhooks.close()
    assert await deliveries(memory) == [("delivered", 1, None)]


async def test_finished_deliveries_are_dropped_after_keep_days(
    api_client: Callable[..., httpx.AsyncClient], memory: Memory, flaky: Flaky
) -> None:
    flaky.release.set()
    async with api_client(webhook={"secret": SECRET}) as client:
        await ok(await client.post(W, json={"id": "w"}), 201)
        await ok(await client.post(f"{W}/w/webhooks", json={"url": flaky.url}), 201)
        await ok(await client.get(f"{W}/w/webhooks/test"))
        await ok(await client.get(f"{W}/w/webhooks/test"))
        await client._transport.app.state.webhooks.close()  # type: ignore[attr-defined]
    sender = Webhooks(WebhookSettings(secret=SECRET, keep_days=1))
    assert [d[0] for d in await deliveries(memory)] == ["delivered", "delivered"]
    assert await sender.purge(memory.database) == 0, "finished just now"
    async with memory.database.transaction() as db:
        first = (await db.execute(select(func.min(WebhookDelivery.seq)))).scalar()
        await db.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.seq == first)
            .values(finished_at=func.now() - timedelta(days=2))
        )
    assert await sender.purge(memory.database) == 1
    assert len(await deliveries(memory)) == 1


async def test_an_unusable_url_is_refused_and_a_bad_delivery_fails_alone(
    client: httpx.AsyncClient, memory: Memory, flaky: Flaky
) -> None:
    await ok(await client.post(W, json={"id": "w"}), 201)
    for bad in ("http://example.com:abc/", "http://exämple..com/"):
        refused = await client.post(f"{W}/w/webhooks", json={"url": bad})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "url"], bad
    await ok(await client.post(f"{W}/w/webhooks", json={"url": flaky.url}), 201)
    flaky.release.set()
    sender = Webhooks(WebhookSettings(secret=SECRET))
    async with memory.database.transaction() as db:
        event = await storage_webhooks.test_event(db, "w")
        endpoint_id = event.endpoints[0][0]
        # a URL stored before the check was this strict
        broken = storage_webhooks.Event(
            event.type, event.data, event.app_id, [(endpoint_id, "http://example.com:abc/")]
        )
        await sender.record(db, broken)
        await sender.record(db, event)
    assert await sender.deliver_due(memory.database) == 2
    found = sorted(await deliveries(memory))
    assert found[0] == ("delivered", 1, None)
    assert found[1][:2] == ("pending", 1) and "InvalidURL" in (found[1][2] or "")
