"""GET /health: each dependency's state, and whether derivation and indexing get on with their work; 503
only when the database is gone (tests/api/test_outages.py); probes at most once an interval."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from sqlalchemy import text

from cluster.deriver import derivation_workers, run_workers
from deployments.api import create_api
from models.llm import LLMConfigError
from models.llm.openai_compatible import OpenAICompatibleLLM
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import messages, workers
from storage.db import Database
from tests.api.conftest import make_settings
from tests.storage.factories import make_tree


def client_of(memory: Memory, llm: object = None, **sections: dict[str, Any]) -> httpx.AsyncClient:
    app = create_api(make_settings(**sections), memory=memory, dialectic_llm=llm)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test")


def served(models: list[str], status: int = 200) -> OpenAICompatibleLLM:
    """An `openai` provider whose server lists ``models`` at /v1/models."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(status, json={"object": "list", "data": [{"id": m} for m in models]})

    return OpenAICompatibleLLM("http://llm.test/v1", "rapport-llm", transport=httpx.MockTransport(handle))


async def test_every_dependency_is_reported(memory: Memory) -> None:
    async with client_of(memory) as client:
        health = await client.get("/health")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok"
    assert (body["database"], body["embedder"], body["index"]["status"]) == ("ok", "ok", "ok")
    assert body["llm"]["status"].startswith("not loaded yet"), "a health check does not load the model"
    assert set(body["index"]) >= {"pending", "parked", "oldest_s"} and "pending" in body["deriver"]
    assert body["dreams"] == {"pending": 0, "running": 0, "done": 0, "failed": 0}
    assert body["webhooks"] == {"pending": 0, "failed": 0, "oldest_s": 0.0}


async def test_a_served_llm_is_asked_for_its_models(memory: Memory) -> None:
    async with client_of(memory, served(["rapport-llm"])) as client:
        body = (await client.get("/health")).json()
    assert body["llm"] == {"model": "openai/rapport-llm", "status": "ok"} and body["status"] == "ok"

    async with client_of(memory, served(["another-model"])) as client:
        health = await client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert "not 'rapport-llm' (LLM_MODEL)" in health.json()["llm"]["status"]


async def test_a_failing_embedder_degrades_but_does_not_fail_the_check(memory: Memory) -> None:
    class Broken:
        dimension = memory.embedder.dimension

        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("CUDA error: out of memory")

    broken = Memory(memory.database, Broken(), memory.index, memory.writer)
    async with client_of(broken) as client:
        health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded" and health.json()["embedder"] == "unavailable: RuntimeError"


# --- derivation and indexing that do not progress ----------------------------------------------------


async def one_message(database: Database) -> None:
    """A user's message, waiting for the deriver and the index."""
    tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        await messages.create_message(
            db, tree.app_id, tree.user_id, tree.session_id, content="hi", is_user=True
        )


async def backdate(database: Database, table: str, seconds: float) -> None:
    async with database.transaction() as db:
        await db.execute(
            text(f"UPDATE {table} SET created_at = now() - make_interval(secs => :s)"), {"s": seconds}
        )


async def test_a_deriver_paused_by_its_llm_makes_health_degraded_with_the_reason(
    memory: Memory, database: Database
) -> None:
    """A wrong key pauses derivation for every app: /health says so (it said "ok" through 18 minutes of
    it), and so does the metric; the worker's row goes when it stops."""
    await one_message(database)
    refused = ScriptedLLM(
        lambda _: (_ for _ in ()).throw(LLMConfigError("the server refused the API key; set LLM_API_KEY"))
    )
    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.01)
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_workers(derivation_workers(Deriver(memory, refused), settings, outage_pause_s=0.05), stop)
    )
    try:
        for _ in range(200):
            async with database.transaction() as db:
                if [w for w in await workers.alive(db, "deriver") if w.state == "paused"]:
                    break
            await asyncio.sleep(0.05)
        async with client_of(memory) as client:
            body = (await client.get("/health")).json()
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    assert body["status"] == "degraded"
    assert body["deriver"]["status"].startswith("derivation is paused on 1 of 1 worker(s)")
    assert "LLM_API_KEY" in body["deriver"]["status"] and body["problems"] == [body["deriver"]["status"]]
    assert _gauge("rapport_health_degraded", part="deriver") == 1.0
    assert _gauge("rapport_health_degraded", part="deriver_backlog") == 1.0
    async with database.transaction() as db:
        assert await workers.alive(db, "deriver") == [], "a stopped process is not a stalled one"


async def test_messages_waiting_with_no_worker_heard_from_are_degraded(
    memory: Memory, database: Database
) -> None:
    await one_message(database)
    async with client_of(memory) as client:
        fresh = (await client.get("/health")).json()
    assert fresh["status"] == "ok", "a message just stored is not a stall"
    await backdate(database, "derivation_queue", 2 * 3600)
    await backdate(database, "index_outbox", 2 * 3600)
    async with client_of(memory) as client:
        body = (await client.get("/health")).json()
    assert body["status"] == "degraded"
    assert body["deriver"]["status"].startswith(
        "no derivation worker has been heard from while 1 messages wait"
    )
    assert any(p.startswith("the search index is behind: 1 writes wait") for p in body["problems"])
    assert _gauge("rapport_health_degraded", part="index") == 1.0
    assert _gauge("rapport_health_degraded", part="index_backlog") == 1.0
    async with client_of(memory, deriver={"enabled": False}) as client:
        off = (await client.get("/health")).json()
    assert off["deriver"]["status"] == "off" and off["problems"] == [
        p for p in body["problems"] if "index" in p
    ]


async def test_a_worker_that_derives_nothing_for_long_is_not_progressing(
    memory: Memory, database: Database
) -> None:
    await one_message(database)
    async with database.transaction() as db:
        await workers.report(db, "host/1/a", "deriver", "running", None, None)
    await backdate(database, "derivation_queue", 2 * 3600)
    async with client_of(memory) as client:
        body = (await client.get("/health")).json()
    assert body["deriver"]["status"].startswith("derivation is not progressing: 1 messages wait")
    assert "no batch has been derived yet" in body["deriver"]["status"]


async def test_probes_run_at_most_once_per_interval_however_often_health_is_asked(memory: Memory) -> None:
    calls = []

    class Counting:
        dimension = memory.embedder.dimension

        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            calls.append(list(texts))
            return await memory.embedder.embed(texts)

    counted = Memory(memory.database, Counting(), memory.index, memory.writer)
    app = create_api(make_settings(health={"probe_interval_s": 60}), memory=counted)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rapport.test"
    ) as client:
        answers = await asyncio.gather(*(client.get("/health") for _ in range(20)))
        live = [await client.get("/health/live") for _ in range(5)]
    assert {a.status_code for a in answers} == {200} and len({a.text for a in answers}) == 1
    assert len(calls) == 1, "twenty callers, one embedding"
    assert all(r.status_code == 200 and r.json() == {"status": "ok"} for r in live)
    assert len(calls) == 1, "liveness probes nothing"


def _gauge(name: str, **labels: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


async def test_a_pause_for_an_outage_ends_when_the_database_answers_a_pause_for_settings_when_a_batch_is_derived(
    memory: Memory,
) -> None:
    """After a PostgreSQL restart an idle deriver is well again at its next claim; an LLM that refused
    its key stays reported until a batch goes through."""
    from cluster.deriver import DerivationSource
    from storage.errors import UnavailableError

    source = DerivationSource(Deriver(memory, ScriptedLLM([])), DeriverSettings())
    assert source.is_outage(UnavailableError("database", "connection refused"))
    assert source.paused is not None and "a dependency is down" in source.paused
    assert await source.claim() is None and source.paused is None, "nothing to claim, but it answered"
    assert source.is_outage(LLMConfigError("the server refused the API key"))
    assert (
        await source.claim() is None and source.paused is not None and "refuses its settings" in source.paused
    )
