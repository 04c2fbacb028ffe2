"""Derivation workers as a Ray Serve deployment: each replica runs ``deriver.concurrency`` queue workers
(cluster/deriver.py) in the background, reaching the embedder and the index's writer through their
handles. It serves no requests; Serve keeps ``deriver.workers`` replicas alive and restarts one whose
loop has died. Killing a replica loses nothing: its batch comes back when its lease expires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from typing import Any

from ray import serve

from cluster.deriver import background_work
from cluster.index_sync import RemoteIndexWriter
from cluster.stack import LLMs, build_deriver, open_stack
from deployments.embedder import ServeEmbedder
from rapport import metrics
from rapport.logs import configure_logging
from rapport.settings import Settings

log = logging.getLogger(__name__)


@serve.deployment(
    name="DeriverWorker", num_replicas=1, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0}
)
class DeriverWorker:
    async def __init__(self, settings: dict[str, Any], embedder: Any, index_writer: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        self._loop: asyncio.Task[None] | None = None
        self._llms: LLMs | None = None
        if not config.deriver.deriving:
            # Bound only because a Serve config names it (deployments/app.py, build_app).
            log.info("the deriver is off (deriver.enabled, deriver.workers): this replica derives nothing")
            return
        metrics.export_via_ray()
        self._resources = AsyncExitStack()
        model = await ServeEmbedder.connect(embedder, config.embedding)
        stack = await self._resources.enter_async_context(
            open_stack(config, embedder=model, writer=RemoteIndexWriter(index_writer))
        )
        # A local model is this node's shared one (cluster/local_llm.py), started now, not on the first batch.
        self._llms = LLMs(config, on_node=True)
        deriver = await build_deriver(stack, self._llms)
        self._stop = asyncio.Event()
        # Derivation, dreams and their scheduler (cluster/deriver.py background_work).
        self._loop = asyncio.create_task(background_work(deriver, config, self._stop))
        log.info("derivation worker running with %s", deriver.llm.name)

    async def check_health(self) -> None:
        if self._loop is not None and self._loop.done():
            raise RuntimeError("the derivation loop stopped; the replica will be restarted")
        if self._llms is not None and not self._llms.alive():
            raise RuntimeError("this node's local model host is gone; restarting to start a new one")

    async def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(loop, timeout=10)
        if hasattr(self, "_resources"):
            await self._resources.aclose()
        if self._llms is not None:
            await self._llms.close()
