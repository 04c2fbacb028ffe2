"""The index's single writer as a Ray Serve deployment (one replica): applies the outbox in the
background and serves the API's inline document writes."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import numpy as np
from ray import serve

from cluster.stack import open_stack
from deployments.embedder import ServeEmbedder
from pipelines.indexing import StoredDocument
from rapport import metrics
from rapport.logs import configure_logging
from rapport.settings import Settings

log = logging.getLogger(__name__)


@serve.deployment(
    name="IndexWriter", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0}
)
class IndexWriter:
    async def __init__(self, settings: dict[str, Any], embedder: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        metrics.export_via_ray()
        model = await ServeEmbedder.connect(embedder, config.embedding)
        self._resources = AsyncExitStack()
        stack = await self._resources.enter_async_context(
            open_stack(config, embedder=model, run_index_sync=True)
        )
        self.sync = stack.sync
        self.loop = stack.sync_loop

    async def write_documents(
        self, rows: list[dict[str, Any]], vectors: np.ndarray, outbox_ids: list[int]
    ) -> None:
        records = [StoredDocument.of(row) for row in rows]
        await self.sync.write_documents(records, vectors, outbox_ids)  # type: ignore[arg-type]

    async def apply(self, outbox_ids: list[int]) -> None:
        await self.sync.apply(outbox_ids)

    async def check_health(self) -> None:
        if self.loop is None or not self.loop.running:
            raise RuntimeError("the index sync loop stopped; the replica will be restarted")

    async def __del__(self) -> None:
        if hasattr(self, "_resources"):  # absent when __init__ failed before it
            await self._resources.aclose()
