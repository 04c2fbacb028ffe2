"""Batch re-derivation on a real local Ray, PostgreSQL and LanceDB, with a scripted LLM: 200 users x 30
messages, each user derived exactly once even when an actor is killed; a stopped job resumes without
touching the users it finished; the API answers and the continuous deriver stays away meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from cluster.batch import BadSelection, BufferedIndexWriter, RunOptions, create_job, drive
from cluster.deriver import derivation_workers
from deployments.api import create_api
from models.embedding.hashing import HashingEmbedder
from models.llm import ChatMessage
from models.llm.client import refused
from models.llm.scripted import ScriptedLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.deriver.prompts import asks_for_facts
from pipelines.memory import Memory
from rapport.settings import Settings
from storage import apps, derivation, jobs, messages, sessions, users
from storage.db import Database
from storage.index import DOCUMENTS, VectorIndex

pytestmark = pytest.mark.slow

USERS, MESSAGES, FACTS_PER_USER = 200, 30, 3
WORDS = [f"w{i}" for i in range(5000)]
LINE = re.compile(r"^\[(\d+)\] (\S+): (.*)$", re.M)


def three_facts(prompt: Sequence[ChatMessage]) -> str:
    """Facts from the user's first three numbered messages. Each answer carries a fresh nonce, so a user
    derived twice would keep two different sets where both were stored."""
    if not asks_for_facts(prompt):
        return "a summary"
    nonce = uuid.uuid4().hex[:10]
    found = [(n, who, said) for n, who, said in LINE.findall(prompt[-1].content) if who != "assistant"]
    facts = [
        {"fact": f"{who} mentioned {said} {nonce}", "sources": [int(n)]}
        for n, who, said in found[:FACTS_PER_USER]
    ]
    return json.dumps({"facts": facts})


async def populate(database: Database) -> tuple[str, list[str]]:
    """An app with USERS users, each with one session of MESSAGES messages (the user speaks first)."""
    rng = random.Random(7)
    async with database.transaction() as db:
        app = await apps.create_app(db, "batch")
        user_ids = []
        for u in range(USERS):
            user = await users.create_user(db, app.id, f"user{u}")
            session = await sessions.create_session(db, app.id, user.id)
            await messages.create_messages(
                db,
                app.id,
                user.id,
                session.id,
                [
                    {"content": " ".join(rng.sample(WORDS, 6)), "is_user": i % 2 == 0, "metadata": {}}
                    for i in range(MESSAGES)
                ],
            )
            user_ids.append(user.id)
    return app.id, user_ids


def job_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "db": {"connection_uri": database_url, "migrate_on_start": False},
            "vector_store": {"uri": str(tmp_path / "lancedb")},
            "deriver": {"batch_wait_s": 0, "poll_interval_s": 0.05, "max_attempts": 3},
        }
    )


async def facts_per_user(database: Database) -> dict[str, int]:
    async with database.transaction() as db:
        rows = await db.execute(
            text(
                "SELECT u.id, count(d.id) FROM users u LEFT JOIN collections c ON c.user_id = u.id AND c.name = 'honcho' "
                "LEFT JOIN documents d ON d.collection_id = c.id WHERE NOT u.assistant GROUP BY u.id"
            )
        )
        return {row[0]: row[1] for row in rows}


async def fact_ids(database: Database, user_ids: Sequence[str]) -> dict[str, set[str]]:
    async with database.transaction() as db:
        rows = await db.execute(
            text("SELECT user_id, id FROM documents WHERE user_id = ANY(:ids)"), {"ids": list(user_ids)}
        )
        out: dict[str, set[str]] = {}
        for user_id, document_id in rows:
            out.setdefault(user_id, set()).add(document_id)
        return out


async def continuous_deriver(
    database: Database, settings: Settings, tmp_path: Path, llm: ScriptedLLM
) -> tuple[Memory, asyncio.Event, asyncio.Future[Any]]:
    """The queue's workers beside a job, over an index of their own: the memory, the event that stops
    them, and their running gather."""
    from pipelines.indexing import IndexSync

    embedder = HashingEmbedder()
    index = await VectorIndex.open(str(tmp_path / "queue-lancedb"), embedder.dimension)
    memory = Memory(database, embedder, index, IndexSync(database, index, embedder))
    deriver = Deriver(memory, llm, options=DeriverOptions.of(settings.deriver))
    stop = asyncio.Event()
    return memory, stop, asyncio.gather(*(w.run(stop) for w in derivation_workers(deriver, settings.deriver)))


async def new_job(database: Database, settings: Settings, app_id: str, mode: str, **kwargs: object) -> str:
    job_id, total = await create_job(
        database,
        settings,
        app_id,
        mode=mode,
        options=RunOptions(),
        **kwargs,  # type: ignore[arg-type]
    )
    assert total == USERS or "users_file" in kwargs
    return job_id


def run(settings: Settings, job_id: str, options: RunOptions, latency_s: float, **kwargs: object) -> object:
    return drive(
        settings,
        job_id,
        options,
        llm=ScriptedLLM(three_facts, latency_s=latency_s),
        embedder=HashingEmbedder(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_every_user_is_derived_exactly_once_though_an_actor_is_killed(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    import ray

    settings = job_settings(database_url, tmp_path)
    app_id, user_ids = await populate(database)
    job_id = await new_job(database, settings, app_id, "append")
    options = RunOptions(actors=3, concurrency=4, poll_s=0.2, actor_cpus=0.25)
    driving = asyncio.create_task(run(settings, job_id, options, latency_s=0.1))  # type: ignore[arg-type]

    # Kill an actor while it holds users, a quarter of the way through.
    victim = None
    while victim is None:
        assert not driving.done(), driving
        async with database.transaction() as db:
            p = await jobs.progress(db, job_id)
            held = (
                await db.execute(
                    text(
                        "SELECT owner FROM derivation_job_users WHERE job_id = :j AND state = 'running' LIMIT 1"
                    ),
                    {"j": job_id},
                )
            ).first()
        if p.done >= USERS // 4 and held is not None:
            victim = held.owner
        await asyncio.sleep(0.05)
    os.kill(ray.get(ray.get_actor(victim).pid.remote()), signal.SIGKILL)

    report = await asyncio.wait_for(driving, timeout=300)
    assert report.state == "done"
    assert report.actor_deaths == 1
    assert (report.progress.done, report.progress.failed) == (USERS, 0)
    assert set((await facts_per_user(database)).values()) == {FACTS_PER_USER}, "a user derived twice or never"
    async with database.transaction() as db:
        queue = dict(
            (await db.execute(text("SELECT status, count(*) FROM derivation_queue GROUP BY 1"))).all()
        )
        leases = (
            await db.execute(text("SELECT count(*) FROM derivation_sessions WHERE lease_owner IS NOT NULL"))
        ).scalar_one()
        state = await derivation.counts(db, app_id=app_id)
    assert queue == {}, "the job's messages are not left for the continuous deriver"
    assert state.done == USERS * MESSAGES
    assert leases == 0

    # The same users again, replacing: the old facts are gone from PostgreSQL and from the index.
    before = await fact_ids(database, user_ids)
    job_id = await new_job(database, settings, app_id, "replace")
    report = await run(settings, job_id, RunOptions(actors=2, concurrency=8, poll_s=0.2), latency_s=0.0)
    assert (report.state, report.progress.done) == ("done", USERS)
    after = await fact_ids(database, user_ids)
    assert all(len(after[u]) == FACTS_PER_USER and not (after[u] & before[u]) for u in user_ids)
    index = await VectorIndex.open(str(tmp_path / "lancedb"), HashingEmbedder().dimension)
    assert await index.count(DOCUMENTS) == USERS * FACTS_PER_USER
    assert await index.count(DOCUMENTS, {"user_id": user_ids[0]}) == FACTS_PER_USER


async def test_a_stopped_job_resumes_without_deriving_its_done_users_again(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    settings = job_settings(database_url, tmp_path)
    app_id, user_ids = await populate(database)
    job_id = await new_job(database, settings, app_id, "replace")
    stop = asyncio.Event()

    def stop_at_a_third(p: jobs.Progress) -> None:
        if p.done >= USERS // 3:
            stop.set()

    options = RunOptions(actors=2, concurrency=4, poll_s=0.2, actor_cpus=0.25)
    first = await run(settings, job_id, options, latency_s=0.05, on_progress=stop_at_a_third, stop=stop)
    assert first.state == "stopped"  # type: ignore[attr-defined]
    async with database.transaction() as db:
        done_first = {
            row.user_id: row.done_at
            for row in await db.execute(
                text(
                    "SELECT user_id, done_at FROM derivation_job_users WHERE job_id = :j AND state = 'done'"
                ),
                {"j": job_id},
            )
        }
        assert (await jobs.get_job(db, job_id)).state == "stopped"
        assert (await jobs.progress(db, job_id)).running == 0
    assert USERS // 3 <= len(done_first) < USERS
    facts_first = await fact_ids(database, list(done_first))

    async with database.transaction() as db:
        await jobs.take_over(db, job_id)
    second = await run(settings, job_id, options, latency_s=0.0)
    assert (second.state, second.progress.done) == ("done", USERS)  # type: ignore[attr-defined]
    async with database.transaction() as db:
        done_after = {
            row.user_id: row.done_at
            for row in await db.execute(
                text("SELECT user_id, done_at FROM derivation_job_users WHERE job_id = :j"), {"j": job_id}
            )
        }
    assert all(done_after[u] == at for u, at in done_first.items()), "a finished user was derived again"
    assert await fact_ids(database, list(done_first)) == facts_first
    assert set((await facts_per_user(database)).values()) == {FACTS_PER_USER}


async def test_the_api_serves_and_the_continuous_deriver_stays_away_during_a_job(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    settings = job_settings(database_url, tmp_path)
    app_id, user_ids = await populate(database)
    job_id = await new_job(database, settings, app_id, "replace")
    options = RunOptions(actors=2, concurrency=4, poll_s=0.2, actor_cpus=0.25)
    driving = asyncio.create_task(run(settings, job_id, options, latency_s=0.1))  # type: ignore[arg-type]

    # The continuous deriver runs beside the job on the same queue: it may derive a user before the
    # job reaches it (the job then replaces those facts), never the messages the job holds or stored.
    queue_llm = ScriptedLLM(three_facts)
    memory, stop_queue, continuous = await continuous_deriver(database, settings, tmp_path, queue_llm)
    api = create_api(settings, memory=memory)
    reads = 0
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://rapport.test"
        ) as client:
            while not driving.done():
                u = random.randrange(USERS)
                response = await client.get(f"/v1/apps/{app_id}/users/name/user{u}")
                assert response.status_code == 200, response.text
                page = await client.post(f"/v1/apps/{app_id}/users/{user_ids[u]}/sessions/list", json={})
                assert page.status_code == 200, page.text
                assert page.json()["total"] == 1
                reads += 1
                await asyncio.sleep(0.02)
        report = driving.result()
    finally:
        stop_queue.set()
        await continuous
        if not driving.done():
            driving.cancel()
    assert reads > 10
    assert queue_llm.prompts, "the continuous deriver took part"
    assert (report.state, report.progress.done) == ("done", USERS)
    assert set((await facts_per_user(database)).values()) == {FACTS_PER_USER}, "derived twice"


async def test_a_user_the_provider_refuses_fails_alone_and_the_job_goes_on(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    """A provider's 4xx on one user's request (too long, unsupported) is that user's failure: retried,
    then failed with the reason, while every other user is derived. Before, it counted as a
    misconfigured model: the job stopped, and every resume stopped again on the same user."""
    settings = job_settings(database_url, tmp_path)
    app_id, user_ids = await populate(database)
    job_id = await new_job(database, settings, app_id, "append")

    def answer(prompt: Sequence[ChatMessage]) -> str:
        if "The user is user7." in prompt[-1].content:
            raise refused(
                400, "request (9755 tokens) exceeds the available context size (4096 tokens)", "llm"
            )
        return three_facts(prompt)

    report = await drive(
        settings,
        job_id,
        RunOptions(actors=1, concurrency=8, poll_s=0.2, actor_cpus=0.25),
        llm=ScriptedLLM(answer),
        embedder=HashingEmbedder(),
    )
    assert (report.state, report.progress.done, report.progress.failed) == ("done", USERS - 1, 1)
    async with database.transaction() as db:
        failed = (
            await db.execute(
                text(
                    "SELECT user_id, error FROM derivation_job_users WHERE job_id = :j AND state = 'failed'"
                ),
                {"j": job_id},
            )
        ).one()
    assert failed.user_id == user_ids[7] and "exceeds the available context size" in failed.error


async def test_a_replace_job_loses_nothing_written_while_it_runs(
    ray_session: None, database: Database, database_url: str, tmp_path: Path
) -> None:
    """Sessions started during a replace job are derived by the continuous deriver (the job holds only
    the sessions it found); the job's replace must not delete what that derived meanwhile."""
    settings = job_settings(database_url, tmp_path)
    app_id, user_ids = await populate(database)
    async with database.transaction() as db:  # derived long ago: the job re-derives them
        await db.execute(text("DELETE FROM derivation_queue WHERE app_id = :a"), {"a": app_id})
    job_id = await new_job(database, settings, app_id, "replace")
    options = RunOptions(actors=2, concurrency=4, poll_s=0.2, actor_cpus=0.25)
    # Each user's model call takes half a second: time for a new session to be written and derived by
    # the continuous deriver after the job read the user, before it stores the user's facts.
    driving = asyncio.create_task(run(settings, job_id, options, latency_s=0.5))  # type: ignore[arg-type]

    memory, stop_queue, continuous = await continuous_deriver(
        database, settings, tmp_path, ScriptedLLM(three_facts)
    )
    api = create_api(settings, memory=memory)
    written: dict[str, list[str]] = {}  # user -> the user's messages written during the job
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api), base_url="http://rapport.test"
        ) as client:
            # A new session for each user the job is deriving right now.
            while not driving.done():
                async with database.transaction() as db:
                    running = await db.execute(
                        text(
                            "SELECT user_id FROM derivation_job_users WHERE job_id = :j AND state = 'running'"
                        ),
                        {"j": job_id},
                    )
                    now = [row[0] for row in running if row[0] not in written]
                for user_id in now:
                    base = f"/v1/apps/{app_id}/users/{user_id}/sessions"
                    session = (await client.post(base, json={})).json()["id"]
                    said = await client.post(
                        f"{base}/{session}/messages/batch",
                        json={
                            "messages": [
                                {"content": f"fresh news for {user_id}", "is_user": True, "metadata": {}}
                            ]
                        },
                    )
                    assert said.status_code == 200, said.text
                    written[user_id] = [m["id"] for m in said.json()]
                await asyncio.sleep(0.05)
        report = await driving
        for _ in range(300):  # the continuous deriver finishes what is left
            async with database.transaction() as db:
                if (await derivation.counts(db, app_id=app_id)).pending == 0:
                    break
            await asyncio.sleep(0.1)
    finally:
        stop_queue.set()
        await continuous
        if not driving.done():
            driving.cancel()
    assert (report.state, report.progress.done) == ("done", USERS)
    assert len(written) > 20, "sessions were written while the job derived their users"
    async with database.transaction() as db:
        cited = {
            row[0]
            for row in await db.execute(
                text(
                    "SELECT jsonb_array_elements_text(metadata -> 'message_ids') FROM documents WHERE user_id = ANY(:u)"
                ),
                {"u": list(written)},
            )
        }
        state = await derivation.counts(db, app_id=app_id)
    assert (state.pending, state.parked) == (0, 0)
    lost = [m for ids in written.values() for m in ids if m not in cited]
    assert lost == [], (
        f"{len(lost)} of {sum(map(len, written.values()))} messages written during the job lost their facts"
    )


async def test_a_users_file_must_name_users_of_the_app(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    settings = job_settings(database_url, tmp_path)
    async with database.transaction() as db:
        app = await apps.create_app(db, "files")
        known = [(await users.create_user(db, app.id, f"u{i}")).id for i in range(3)]
    listed = tmp_path / "users.txt"
    listed.write_text(f"{known[0]}\n\n{known[2]}\n{known[0]}\n")
    job_id = await new_job(database, settings, "files", "append", users_file=str(listed))
    async with database.transaction() as db:
        job = await jobs.get_job(db, job_id)
        named = [r[0] for r in await db.execute(text("SELECT user_id FROM derivation_job_users ORDER BY n"))]
    assert (job.users_total, named) == (2, [known[0], known[2]])

    listed.write_text(f"{known[1]}\nnot-a-user\n")
    with pytest.raises(BadSelection, match="not-a-user"):
        await new_job(database, settings, app.id, "append", users_file=str(listed))
    async with database.transaction() as db:
        assert len(await jobs.list_jobs(db)) == 1, "nothing is recorded for a bad selection"


class SlowWriter:
    """An index writer whose hand-overs take a while, recording what arrived."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.removals: list[int] = []
        self.busy = asyncio.Event()

    async def write_documents(self, rows: list[str], vectors: np.ndarray, outbox_ids: list[int]) -> None:
        self.busy.set()
        await asyncio.sleep(0.3)
        self.rows += rows

    async def apply(self, outbox_ids: list[int]) -> None:
        await asyncio.sleep(0.1)
        self.removals += outbox_ids


async def test_closing_the_buffered_writer_waits_for_a_hand_over_under_way() -> None:
    writer = SlowWriter()
    buffered = BufferedIndexWriter(writer, interval_s=0.01)
    await buffered.write_documents(["a", "b"], np.zeros((2, 4)), [1, 2])
    await buffered.apply([3])
    await writer.busy.wait()  # the periodic flush is handing them over
    await buffered.write_documents(["c"], np.zeros((1, 4)), [4])  # and this waits for the next
    await buffered.close()
    assert (writer.rows, writer.removals) == (["a", "b", "c"], [3]), "nothing left to the index sync"
