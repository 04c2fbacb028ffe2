"""A derivation worker actor killed with SIGKILL while it holds a lease loses nothing: once the lease
expires another worker derives every message, and no fact is stored twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import text

from cluster.deriver import DerivationActor, derivation_workers
from models.embedding.hashing import HashingEmbedder
from models.llm import ChatMessage
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.indexing import IndexSync
from pipelines.memory import Memory
from rapport.settings import Settings
from storage import derivation, messages, sessions
from storage.db import Database
from storage.index import VectorIndex
from tests.storage.factories import make_tree

pytestmark = pytest.mark.slow

LINE = re.compile(r"^\[(\d+)\] ana: (.*)$", re.M)


def one_fact_per_message(prompt: Sequence[ChatMessage]) -> str:
    """A fact for each of the user's numbered messages, citing it."""
    found = LINE.findall(prompt[-1].content)
    facts = [{"fact": f"ana said: {said}", "sources": [int(n)]} for n, said in found]
    return json.dumps({"facts": facts})


async def test_a_killed_worker_loses_nothing_and_duplicates_nothing(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    import ray

    tree = await make_tree(database, user_name="ana")
    async with database.transaction() as db:
        session_ids = [tree.session_id] + [
            (await sessions.create_session(db, tree.app_id, tree.user_id)).id for _ in range(2)
        ]
        for s, session_id in enumerate(session_ids):
            await messages.create_messages(
                db,
                tree.app_id,
                tree.user_id,
                session_id,
                [{"content": f"fact {s}-{i}", "is_user": True, "metadata": {}} for i in range(3)],
            )

    settings = Settings.model_validate(
        {
            "db": {"connection_uri": database_url, "migrate_on_start": False},
            "vector_store": {"uri": str(tmp_path / "lancedb")},
            "deriver": {"lease_s": 5, "batch_wait_s": 0, "poll_interval_s": 0.1, "max_attempts": 3},
        }
    )
    embedder = HashingEmbedder()
    # The doomed worker's model takes a minute per call: it is killed while it waits, lease in hand.
    slow = ScriptedLLM(one_fact_per_message, latency_s=60)
    actor = ray.remote(DerivationActor).options(max_restarts=0).remote(settings.model_dump(), slow, embedder)
    actor.run.remote()
    deadline = time.monotonic() + 60
    while (await _counts(database)).in_progress == 0:
        assert time.monotonic() < deadline, "the actor never claimed work"
        await asyncio.sleep(0.2)
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)

    index = await VectorIndex.open(str(tmp_path / "lancedb"), embedder.dimension)
    memory = Memory(database, embedder, index, IndexSync(database, index, embedder))
    deriver = Deriver(memory, ScriptedLLM(one_fact_per_message), options=DeriverOptions.of(settings.deriver))
    survivor = derivation_workers(deriver, settings.deriver)[0]
    deadline = time.monotonic() + 60
    while (await _counts(database)).done < 9:
        assert time.monotonic() < deadline, await _counts(database)
        if await survivor.run_once() == "idle":
            await asyncio.sleep(0.3)  # the dead worker's lease has not expired yet

    async with database.transaction() as db:
        per_message = dict(
            (
                await db.execute(
                    text(
                        "SELECT m.id, count(d.id) FROM messages m LEFT JOIN documents d "
                        "ON d.metadata -> 'message_ids' ? m.id GROUP BY m.id"
                    )
                )
            ).all()
        )
    assert len(per_message) == 9
    assert set(per_message.values()) == {1}, f"every message has exactly one fact: {per_message}"
    assert (await _counts(database)).parked == 0


async def _counts(database: Database) -> derivation.Counts:
    async with database.transaction() as db:
        return await derivation.counts(db)
