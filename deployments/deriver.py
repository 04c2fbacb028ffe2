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

from cluster.deriver import derivation_workers, run_workers
from deployments.embedder import ServeEmbedder
from deployments.indexer import ServeIndexWriter
from models.llm import LLMClient, build_llm
from pipelines.deriver import Deriver, DeriverOptions
from rapport import metrics
from rapport.logs import configure_logging
from rapport.settings import LLMSettings, Settings
from rapport.stack import open_stack

log = logging.getLogger(__name__)


@serve.deployment(
    name="DeriverWorker", num_replicas=1, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0}
)
class DeriverWorker:
    async def __init__(self, settings: dict[str, Any], embedder: Any, index_writer: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        config = Settings.model_validate(settings)
        configure_logging(config.app.log_level)
        self._loop: asyncio.Task[None] | None = None
        self._local: Any = None  # this node's shared local model, when the LLM is local
        if not config.deriver.deriving:
            # Bound only because a Serve config names it (deployments/app.py, build_app).
            log.info("the deriver is off (deriver.enabled, deriver.workers): this replica derives nothing")
            return
        metrics.export_via_ray()
        self._resources = AsyncExitStack()
        model = await ServeEmbedder.connect(embedder, config.embedding)
        stack = await self._resources.enter_async_context(
            open_stack(config, embedder=model, writer=ServeIndexWriter(index_writer))
        )
        llm = await self._llm(config.llm_for("deriver"), config)
        summary = config.llm_for("summary")
        summary_llm = llm if summary == config.llm_for("deriver") else await self._llm(summary, config)
        deriver = Deriver(stack.memory, llm, summary_llm, DeriverOptions.of(config.deriver))
        self._stop = asyncio.Event()
        workers = derivation_workers(deriver, config.deriver, limits=config.limits)
        self._loop = asyncio.create_task(run_workers(workers, self._stop))
        log.info("derivation worker running with %s", llm.name)

    async def _llm(self, llm: LLMSettings, config: Settings) -> LLMClient:
        if llm.provider != "local":
            return build_llm(llm, config.home)
        from cluster.local_llm import node_local_llm

        self._local = await node_local_llm(llm, config.home)
        return self._local.llm  # type: ignore[no-any-return]

    async def check_health(self) -> None:
        if self._loop is not None and self._loop.done():
            raise RuntimeError("the derivation loop stopped; the replica will be restarted")
        if self._local is not None and not self._local.alive():
            raise RuntimeError("this node's local model host is gone; restarting to start a new one")

    async def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(loop, timeout=10)
        if hasattr(self, "_resources"):
            await self._resources.aclose()
