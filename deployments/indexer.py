"""The index's single writer as a Ray Serve deployment (one replica): applies the outbox in the
background and serves the API's inline document writes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from ray import serve

from deployments.embedder import ServeEmbedder
from pipelines.indexing import IndexSync
from rapport.logs import configure_logging
from rapport.settings import Settings
from storage.db import open_database
from storage.index import open_index
from storage.query import Record

log = logging.getLogger(__name__)


@serve.deployment(
    name="IndexWriter", num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0}
)
class IndexWriter:
    async def __init__(self, settings: dict[str, Any], embedder: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        self.database = await open_database(config)
        try:
            model = await ServeEmbedder.connect(embedder, config.embedding)
            index = await open_index(config, model.dimension)
        except BaseException:
            await self.database.dispose()
            raise
        self.sync = IndexSync.configured(self.database, index, model, config.vector_store)
        self.sync.start(config.vector_store)

    async def write_documents(
        self, rows: list[dict[str, Any]], vectors: np.ndarray, outbox_ids: list[int]
    ) -> None:
        records = [SimpleNamespace(**row) for row in rows]
        await self.sync.write_documents(records, vectors, outbox_ids)  # type: ignore[arg-type]

    async def apply(self, outbox_ids: list[int]) -> None:
        await self.sync.apply(outbox_ids)

    async def check_health(self) -> None:
        if not self.sync.running:
            raise RuntimeError("the index sync loop stopped; the replica will be restarted")

    async def __del__(self) -> None:
        if hasattr(self, "sync"):  # absent when __init__ failed part way
            await self.sync.stop()
            await self.database.dispose()


class ServeIndexWriter:
    """The IndexWriter interface over a handle to the IndexWriter deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def write_documents(
        self, rows: Sequence[Record], vectors: np.ndarray, outbox_ids: Sequence[int]
    ) -> None:
        plain = [dict(row._mapping) for row in rows]
        await self._handle.write_documents.remote(plain, vectors, list(outbox_ids))

    async def apply(self, outbox_ids: Sequence[int]) -> None:
        await self._handle.apply.remote(list(outbox_ids))
