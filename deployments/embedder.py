"""The embedding model as a Ray Serve deployment: concurrent callers' texts are batched on the GPU/CPU."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from models.embedding import load_embedder
from rapport import metrics, priority
from rapport.coalesce import Coalescer
from rapport.logs import configure_logging
from rapport.priority import lower_priority
from rapport.settings import EmbeddingSettings, Settings
from storage.errors import UnavailableError

log = logging.getLogger(__name__)


# The embedder that indexes messages in the background (and embeds the deriver's facts) runs below the
# API's requests: without it, indexing 380 new messages/s halved the API's throughput on a 2-core box. It
# runs above the local model, so that new messages are searchable within seconds while the model derives
# (rapport/priority.py); it is never starved outright, so it still answers Serve's health checks.


@serve.deployment(name="Embedder", max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class Embedder:
    """Each request is a list of texts; `@serve.batch` merges concurrent requests into one model call."""

    def __init__(self, settings: dict[str, Any], background: bool = False) -> None:
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        metrics.export_via_ray()
        self.model = load_embedder(
            config.embedding.model,
            config.embedding.device,
            config.embedding.precision,
            config.embedding.cpu_threads,
            config.embedding.max_windows_per_text,
        )
        if background:
            self.model.embed_sync(["warm-up"])  # let torch start its threads, so they are reniced too
            lower_priority(priority.INDEXING)
        self.embed_batch.set_max_batch_size(config.embedding.batch_size)  # type: ignore[attr-defined]
        self.embed_batch.set_batch_wait_timeout_s(config.embedding.batch_wait_s)  # type: ignore[attr-defined]

    def dimension(self) -> int:
        return self.model.dimension

    # A batch is measured in texts, not requests: callers coalesce texts into requests themselves.
    @serve.batch(
        max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=lambda requests: sum(map(len, requests))
    )
    async def embed_batch(self, requests: list[list[str]]) -> list[np.ndarray]:
        texts = [text for request in requests for text in request]
        # The model runs in a thread so this replica keeps accepting (and batching) requests meanwhile.
        vectors = await asyncio.to_thread(self.model.embed_sync, texts)
        bounds = np.cumsum([0, *(len(r) for r in requests)])
        return [vectors[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self.embed_batch(texts)

    async def check_health(self) -> None:
        """Serve restarts a replica whose model no longer embeds (a CUDA error can leave it broken)."""
        vector = await asyncio.to_thread(self.model.embed_sync, ["health"])
        if not np.isfinite(vector).all():
            raise RuntimeError("the embedding model returns non-finite vectors")


class ServeEmbedder:
    """The TextEmbedder interface over a handle to the Embedder deployment.

    Concurrent calls from one process (an API replica serving many requests, the index sync) are
    coalesced into one Serve request of up to ``max_texts`` texts: each Serve request costs about 3 ms
    of CPU on its way, which on CPUs is as much as embedding a short text, so fewer, fuller requests make
    batching pay. While a request is on its way, the next one waits at most ``wait_s`` for company; when
    none is, a call goes at once (a lone query, the usual case at low load, pays no wait). ``max_texts``
    1 sends every text alone.
    """

    def __init__(self, handle: Any, dimension: int, *, max_texts: int = 64, wait_s: float = 0.005) -> None:
        self._handle = handle
        self._dimension = dimension
        self._max_texts = max_texts
        self._coalescer: Coalescer[str] = Coalescer(self._remote, max_items=max_texts, wait_s=wait_s)

    @classmethod
    async def connect(cls, handle: Any, embedding: EmbeddingSettings | None = None) -> ServeEmbedder:
        embedding = embedding or EmbeddingSettings()
        dimension = await handle.dimension.remote()
        return cls(handle, dimension, max_texts=embedding.batch_size, wait_s=embedding.batch_wait_s)

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        try:
            if self._max_texts == 1:
                parts = await asyncio.gather(*(self._handle.embed.remote([text]) for text in texts))
                return np.concatenate(parts)
            return np.concatenate(await self._coalescer.run(texts))
        except (RayError, RayServeException) as exc:
            # The deployment is gone, restarting or shedding load: a wait, not a bug (503 in the API).
            raise UnavailableError(
                "embedding model", f"the Embedder deployment cannot answer just now ({type(exc).__name__})"
            ) from exc

    async def _remote(self, texts: list[str]) -> np.ndarray:
        result: np.ndarray = await self._handle.embed.remote(texts)
        return result
