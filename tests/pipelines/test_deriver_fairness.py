"""One app's backlog does not hold up another app's derivation: the queue workers give the quiet app the
next free place, and limits.app_derivations caps the LLM calls the busy app has in flight."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cluster.deriver import derivation_workers, run_workers
from models.llm import ChatMessage, Completion
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.memory import Memory
from rapport.settings import DeriverSettings, LimitSettings
from storage import derivation, messages, sessions
from storage.db import Database
from tests.storage.factories import make_tree

BATCH_S = 0.2  # each extraction call takes this long


class AppTrackingLLM(ScriptedLLM):
    """Answers every extraction with no facts, after BATCH_S, noting which app each call was for (the
    messages say it), in what order the calls began, and the most calls one app had at once."""

    def __init__(self) -> None:
        super().__init__(lambda prompt: json.dumps({"facts": []}), latency_s=BATCH_S)
        self.started: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()

    async def _complete(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float, schema: Any
    ) -> Completion:
        app = re.findall(r"app (\w+) speaking", messages[-1].content)[0]
        self.started.append(app)
        self.in_flight[app] += 1
        self.most_at_once[app] = max(self.most_at_once[app], self.in_flight[app])
        try:
            return await super()._complete(messages, max_tokens, temperature, schema)
        finally:
            self.in_flight[app] -= 1


async def queue(database: Database, app_name: str, sessions_count: int) -> None:
    tree = await make_tree(database, app_name=app_name)
    async with database.transaction() as db:
        for i in range(sessions_count):
            session_id = (
                tree.session_id
                if i == 0
                else (await sessions.create_session(db, tree.app_id, tree.user_id)).id
            )
            text = f"app {app_name} speaking, session {i}"
            await messages.create_messages(
                db, tree.app_id, tree.user_id, session_id, [{"content": text, "is_user": True}]
            )


async def derive_all(memory: Memory, llm: AppTrackingLLM, per_app: int, workers: int) -> None:
    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.02, concurrency=workers, lease_s=60)
    deriver = Deriver(memory, llm, options=DeriverOptions.of(settings))
    stop = asyncio.Event()
    limits = LimitSettings(app_derivations=per_app)
    running = asyncio.create_task(run_workers(derivation_workers(deriver, settings, limits=limits), stop))
    try:
        async with asyncio.timeout(60):
            while True:
                async with memory.database.transaction() as db:
                    state = await derivation.counts(db)
                if state.pending + state.in_progress + state.retrying == 0:
                    break
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    assert state.done == len(llm.started) and state.parked == 0


async def test_a_backlog_in_one_app_does_not_delay_another(database: Database, memory: Memory) -> None:
    await queue(database, "busy", 8)
    await queue(database, "quiet", 1)  # queued after the whole backlog
    llm = AppTrackingLLM()

    await derive_all(memory, llm, per_app=2, workers=3)

    assert llm.started.count("busy") == 8
    assert "quiet" in llm.started[:3], f"the quiet app waited behind the backlog: {llm.started}"
    assert llm.most_at_once["busy"] == 2, "the busy app used its share (2) of the 3 workers, never more"


async def test_without_a_cap_apps_still_take_turns(database: Database, memory: Memory) -> None:
    await queue(database, "busy", 6)
    await queue(database, "quiet", 1)
    llm = AppTrackingLLM()

    await derive_all(memory, llm, per_app=0, workers=2)

    # Uncapped, two workers claiming at the very same instant may both pick busy's work; the quiet app
    # has the next turn whichever worker frees first (without turns it would be last, behind all 6). The
    # two free up at about the same moment, so the other's next call (busy's) may begin a moment before.
    assert llm.started.index("quiet") <= 3, f"the quiet app waited behind the backlog: {llm.started}"
    assert llm.most_at_once["busy"] == 2, "uncapped, the busy app may use every worker"
