"""The API as a Ray Serve ingress deployment: one replica = one process with its own DB pool, talking
to the Embedder and IndexWriter deployments through handles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from ray import serve

from cluster.index_sync import RemoteIndexWriter
from cluster.stack import LLMs, open_stack
from deployments.api import create_api
from deployments.embedder import ServeEmbedder
from pipelines.memory import Memory
from rapport import metrics
from rapport.logs import configure_logging
from rapport.settings import Settings


@serve.deployment(
    name="RapportAPI",
    # Serve's default of 5 makes the proxy back off under load (measured: 16 req/s at 64 callers).
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class RapportAPI:
    """Serves the FastAPI app built from the settings it is bound with."""

    def __init__(
        self, settings: dict[str, Any], embedder: Any, index_writer: Any, deriver: Any = None
    ) -> None:
        # model_validate skips the env/file sources: replicas use exactly the settings they were given.
        self.settings = Settings.model_validate(settings)
        self.embedder = embedder
        self.index_writer = index_writer
        configure_logging(self.settings.app.log_level)
        metrics.export_via_ray()
        # Reached on the first chat call. A local model is the node's shared one, as the derivation
        # workers use it: the replica starts the node's host if no worker has yet, never a copy of its own.
        self._dialectic = LLMs(self.settings, on_node=True)("dialectic")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.settings, make_memory=self._memory, dialectic_llm=self._dialectic)

    @asynccontextmanager
    async def _memory(self, settings: Settings) -> AsyncIterator[Memory]:
        embedder = await ServeEmbedder.connect(self.embedder, settings.embedding)
        async with open_stack(
            settings, embedder=embedder, writer=RemoteIndexWriter(self.index_writer)
        ) as stack:
            yield stack.memory
