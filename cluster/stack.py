"""The one place the services are assembled from settings: database, embedder, index, index sync, LLMs.

Every entry point calls ``open_stack``: the API (in-process or as a Serve replica), the index writer
deployment, the derivation workers and the CLI. What differs between them is passed in (a Serve handle
adapter as the embedder or the index writer), never rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cluster.index_sync import IndexSyncLoop
from models.embedding import TextEmbedder
from pipelines.indexing import IndexSync, IndexWriter
from pipelines.memory import Memory
from rapport.settings import LLMSettings, Settings
from storage.db import Database
from storage.index import VectorIndex

if TYPE_CHECKING:
    from cluster.local_llm import NodeModel
    from models.llm import LLMClient
    from pipelines.deriver import Deriver

log = logging.getLogger(__name__)


@dataclass
class Stack:
    settings: Settings
    database: Database
    embedder: TextEmbedder
    index: VectorIndex
    sync: IndexSync  # the index's writer in this process
    memory: Memory
    sync_loop: IndexSyncLoop | None = None  # applying the outbox in the background, if asked to


@asynccontextmanager
async def open_stack(
    settings: Settings,
    *,
    database: Database | None = None,
    embedder: TextEmbedder | None = None,
    writer: IndexWriter | None = None,
    run_index_sync: bool = False,
    recreate_index: bool = False,
) -> AsyncIterator[Stack]:
    """Connect to (or start) the database, load or take the embedder, open the index.

    ``database``: use this open database (the caller keeps it) instead of connecting from the settings.
    ``embedder``: use this one (e.g. a Serve handle adapter) instead of loading the model here.
    ``writer``: where the API's inline index writes go (default: this process's index sync).
    ``run_index_sync``: also apply the index outbox in the background from this process.
    """
    from models.embedding import load_embedder
    from storage.db import open_database
    from storage.index import open_index

    borrowed = database is not None
    database = database or await open_database(settings)
    loop: IndexSyncLoop | None = None
    try:
        if embedder is None:
            model = settings.embedding
            embedder = await asyncio.to_thread(
                load_embedder,
                model.model,
                model.device,
                model.precision,
                model.cpu_threads,
                model.max_windows_per_text,
            )
        index = await open_index(settings, embedder.dimension, recreate=recreate_index)
        sync = IndexSync.configured(database, index, embedder, settings.vector_store)
        if run_index_sync:
            loop = IndexSyncLoop(sync, settings.vector_store, service=settings).start()
        memory = Memory(database, embedder, index, writer or sync, settings.app.assistant_peer)
        yield Stack(settings, database, embedder, index, sync, memory, loop)
    finally:
        if loop is not None:
            await loop.stop()
        if not borrowed:
            await database.dispose()


Role = Literal["deriver", "summary", "dialectic"]


class LLMs:
    """The one place an LLM client is chosen and built for each part of Rapport that asks a model:
    ``llms("deriver")``, ``llms("summary")``, ``llms("dialectic")`` (``Settings.llm_for``). Parts whose
    settings are the same share one client.

    Each client is built on its first call, so a process that never asks (an API replica that never
    chats) loads no model and a wrong setting fails that call, naming the setting, not the start-up;
    ``built(part)`` builds one now and returns the client itself, for the parts that should fail fast
    and read its limits (the deriver fits its prompts to them). With ``on_node`` (Serve replicas), the local
    model is the node's shared one (cluster/local_llm.py): the first caller on a node starts its host,
    and a node holds one copy of the weights however many replicas use it. Without, it is this process's
    own (models/llm/local.py keeps one per file).
    """

    def __init__(self, settings: Settings, *, on_node: bool = False) -> None:
        self.settings = settings
        self.on_node = on_node
        self._clients: dict[str, LLMClient] = {}
        # Each node-shared client's host, once connected (held: a host lives while a client references it).
        self._hosts: list[list[NodeModel]] = []

    def __call__(self, role: Role) -> LLMClient:
        llm = self.settings.llm_for(role)
        key = llm.model_dump_json()
        if key not in self._clients:
            self._clients[key] = self._build(llm)
        return self._clients[key]

    def _build(self, llm: LLMSettings) -> LLMClient:
        from models.llm import build_llm, llm_name
        from models.llm.lazy import LazyLLM

        home = self.settings.home
        if llm.provider != "local" or not self.on_node:
            # build_llm joins and hashes a local model's weights on their first use: off the event loop.
            return LazyLLM(lambda: asyncio.to_thread(build_llm, llm, home), name=llm_name(llm))
        host: list[NodeModel] = []
        self._hosts.append(host)

        async def connect() -> LLMClient:
            from cluster.local_llm import node_local_llm
            from models.llm.weights import resolve_local_model

            # Joining and hashing the weights (once per node) must not stall this replica's requests.
            await asyncio.to_thread(resolve_local_model, llm.local_model, home)
            host[:] = [await node_local_llm(llm, home)]  # a host that died is replaced, not kept
            return host[0].llm

        return LazyLLM(connect, name=llm_name(llm), alive=lambda: not host or host[0].alive())

    async def built(self, role: Role) -> LLMClient:
        """The part's client, built now (a local model loads, a node's host starts): the provider's own
        client, whose limits (``context_tokens``, ``max_tokens``) are the model's."""
        from models.llm.lazy import LazyLLM

        client = self(role)
        return await client.client() if isinstance(client, LazyLLM) else client

    def alive(self) -> bool:
        """False once a node's shared model this process uses is gone (its owner died)."""
        return all(host[0].alive() for host in self._hosts if host)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


async def build_deriver(stack: Stack, llm: LLMClient | LLMs | None = None) -> Deriver:
    """The deriver over this stack, with the LLMs ``llm`` builds (default: ``LLMs(settings)``) for
    derivation and summaries, built now (a missing model or key fails here, naming its setting, not at
    the first batch), or the one client ``llm`` for both (a test double)."""
    from pipelines.deriver import Deriver, DeriverOptions

    options = DeriverOptions.of(stack.settings.deriver)
    if llm is not None and not isinstance(llm, LLMs):
        return Deriver(stack.memory, llm, options=options)
    llms = llm or LLMs(stack.settings)
    return Deriver(stack.memory, await llms.built("deriver"), await llms.built("summary"), options)
