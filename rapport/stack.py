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
from typing import TYPE_CHECKING

from cluster.index_sync import IndexSyncLoop
from models.embedding import TextEmbedder
from pipelines.indexing import IndexSync, IndexWriter
from pipelines.memory import Memory
from rapport.settings import LLMSettings, Settings
from storage.db import Database
from storage.index import VectorIndex

if TYPE_CHECKING:
    from models.llm import LLMClient
    from pipelines.deriver import Deriver
    from pipelines.dialectic import Dialectic

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
        memory = Memory(database, embedder, index, writer or sync)
        yield Stack(settings, database, embedder, index, sync, memory, loop)
    finally:
        if loop is not None:
            await loop.stop()
        if not borrowed:
            await database.dispose()


def build_deriver(stack: Stack, llm: LLMClient | None = None) -> Deriver:
    """The deriver over this stack, with the LLMs the settings name for derivation and summaries (or
    ``llm`` for both)."""
    from models.llm import build_llm
    from pipelines.deriver import Deriver, DeriverOptions

    settings = stack.settings
    if llm is not None:
        return Deriver(stack.memory, llm, options=DeriverOptions.of(settings.deriver))
    llm = build_llm(settings.llm_for("deriver"), settings.home)
    summary_settings = settings.llm_for("summary")
    summary_llm = (
        llm if summary_settings == settings.llm_for("deriver") else build_llm(summary_settings, settings.home)
    )
    return Deriver(stack.memory, llm, summary_llm, DeriverOptions.of(settings.deriver))


def llm_name(llm: LLMSettings) -> str:
    """provider/model, as logs and a job's ledger name the model."""
    return f"{llm.provider}/{llm.model or (llm.local_model if llm.provider == 'local' else 'default')}"


def dialectic_llm(settings: Settings) -> LLMClient:
    """The dialectic's LLM (``Settings.llm_for("dialectic")``), built on its first call, not here: an API
    process that never answers a chat loads no model. A local model already loaded in this process is
    shared (models/llm/local.py keeps one per file)."""
    from models.llm import build_llm
    from models.llm.lazy import LazyLLM

    llm = settings.llm_for("dialectic")
    name = llm_name(llm)
    # build_llm may join and hash the local weights on their first use: off the event loop.
    return LazyLLM(lambda: asyncio.to_thread(build_llm, llm, settings.home), name=name)


def build_dialectic(stack: Stack, llm: LLMClient | None = None) -> Dialectic:
    """The dialectic over this stack, with ``llm`` or the one the settings name (built on first use)."""
    from pipelines.dialectic import Dialectic, DialecticOptions

    settings = stack.settings
    return Dialectic(stack.memory, llm or dialectic_llm(settings), DialecticOptions.of(settings.dialectic))
