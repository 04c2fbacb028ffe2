"""The embedding model as a Ray Serve deployment: concurrent callers' texts are batched on the GPU/CPU."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve

from models.embedding import load_embedder
from rapport.logs import configure_logging
from rapport.settings import Settings

# Callers' lists are cut to this many texts per request, so one long list (a sync batch) cannot hold
# a batch hostage while queries wait behind it.
TEXTS_PER_REQUEST = 32

log = logging.getLogger(__name__)


def run_only_when_idle() -> None:
    """Put every thread of this process in Linux's SCHED_IDLE class (new threads inherit it): it runs
    only on CPU time nothing else wants. The embedder that indexes messages in the background runs
    so; without it, indexing 380 new messages/s halved the API's throughput on a 2-core box. The
    index lags instead, and /health shows by how much."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted: run at normal priority
        log.warning("could not lower this embedder's priority (%s); it runs at normal priority", exc)


@serve.deployment(name="Embedder", max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class Embedder:
    """Each request is a list of texts; `@serve.batch` merges concurrent requests into one model call."""

    def __init__(self, settings: dict[str, Any], background: bool = False) -> None:
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        self.model = load_embedder(config.embedding.model, config.embedding.device)
        if background:
            self.model.embed_sync(["warm-up"])  # let torch start its threads, so they are reniced too
            run_only_when_idle()
        self.embed_batch.set_max_batch_size(config.embedding.batch_size)  # type: ignore[attr-defined]
        self.embed_batch.set_batch_wait_timeout_s(config.embedding.batch_wait_s)  # type: ignore[attr-defined]

    def dimension(self) -> int:
        return self.model.dimension

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def embed_batch(self, requests: list[list[str]]) -> list[np.ndarray]:
        texts = [text for request in requests for text in request]
        # The model runs in a thread so this replica keeps accepting (and batching) requests meanwhile.
        vectors = await asyncio.to_thread(self.model.embed_sync, texts)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [vectors[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self.embed_batch(texts)


class ServeEmbedder:
    """The TextEmbedder interface over a handle to the Embedder deployment."""

    def __init__(self, handle: Any, dimension: int) -> None:
        self._handle = handle
        self._dimension = dimension

    @classmethod
    async def connect(cls, handle: Any) -> ServeEmbedder:
        return cls(handle, await handle.dimension.remote())

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        chunks = [list(texts[i : i + TEXTS_PER_REQUEST]) for i in range(0, len(texts), TEXTS_PER_REQUEST)]
        parts = await asyncio.gather(*(self._handle.embed.remote(chunk) for chunk in chunks))
        return np.concatenate(parts)
