"""The API as a Ray Serve ingress deployment: one replica = one process with its own DB pool, talking
to the Embedder and IndexWriter deployments through handles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from ray import serve

from deployments.api import create_api
from deployments.embedder import ServeEmbedder
from deployments.indexer import ServeIndexWriter
from models.llm import LLMClient
from models.llm.lazy import LazyLLM
from pipelines.memory import Memory
from rapport import metrics
from rapport.logs import configure_logging
from rapport.settings import Settings
from rapport.stack import dialectic_llm, open_stack

if TYPE_CHECKING:
    from cluster.local_llm import NodeModel


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

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.settings, make_memory=self._memory, dialectic_llm=self._dialectic_llm())

    def _dialectic_llm(self) -> LLMClient:
        """The chat route's model, reached on the first chat call. A local model is the node's shared one
        (cluster/local_llm.py, as the derivation workers use it): the replica starts the node's host if
        no worker has yet, and never loads a copy of its own."""
        llm = self.settings.llm_for("dialectic")
        if llm.provider != "local":
            return dialectic_llm(self.settings)
        node: list[NodeModel] = []

        async def connect() -> LLMClient:
            from cluster.local_llm import node_local_llm
            from models.llm.weights import resolve_local_model

            # Joining and hashing the weights (once per node) must not stall this replica's requests.
            await asyncio.to_thread(resolve_local_model, llm.local_model, self.settings.home)
            node[:] = [await node_local_llm(llm, self.settings.home)]  # held: the host is reference-counted
            return node[0].llm

        return LazyLLM(
            connect, name=f"local/{llm.model or llm.local_model}", alive=lambda: not node or node[0].alive()
        )

    @asynccontextmanager
    async def _memory(self, settings: Settings) -> AsyncIterator[Memory]:
        embedder = await ServeEmbedder.connect(self.embedder, settings.embedding)
        async with open_stack(
            settings, embedder=embedder, writer=ServeIndexWriter(self.index_writer)
        ) as stack:
            yield stack.memory
