"""GET /health: each dependency's state; 503 only when the database is gone (tests/api/test_outages.py)."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np

from deployments.api import create_api
from models.llm.openai_compatible import OpenAICompatibleLLM
from pipelines.memory import Memory
from tests.api.conftest import make_settings


def client_of(memory: Memory, llm: object = None) -> httpx.AsyncClient:
    app = create_api(make_settings(), memory=memory, dialectic_llm=llm)  # type: ignore[arg-type]
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
