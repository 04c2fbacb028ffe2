"""Dreams over real PostgreSQL and LanceDB with a scripted LLM: a contradiction is superseded, never
deleted, and the newer wins in context, representation, query and chat while the history shows the
older; near-duplicates merge; deductions keep their premises; cards are derived without overwriting
one set through the API; the queue (schedule_dream, the scheduler, leases, failures) and the deriver
against a superseded conclusion."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from cluster.deriver import OUTAGES
from cluster.dreams import DreamSource
from cluster.index_sync import drain
from cluster.worker import QueueWorker
from deployments.api import create_api
from models.llm.scripted import ScriptedLLM
from pipelines.dreams import Dreamer
from pipelines.memory import Memory
from rapport.settings import DreamSettings
from storage import dreams
from storage.derivation import LeaseLost
from storage.query import record_columns
from storage.tables import Collection, Document, Dream, User
from tests.api.conftest import make_settings

W = "/v3/workspaces/w"
ANSWER = "Ana lives in Porto."


def verdict(contradictions: list[tuple[int, int]] = (), deductions: list[tuple[str, list[int]]] = ()) -> str:  # type: ignore[assignment]
    return json.dumps(
        {
            "contradictions": [{"older": a, "newer": b} for a, b in contradictions],
            "deductions": [{"text": t, "premises": p} for t, p in deductions],
        }
    )


@pytest.fixture
async def client(memory: Memory) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(make_settings(), memory=memory, dialectic_llm=ScriptedLLM([ANSWER] * 5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test") as c:
        yield c


async def conclude(
    client: httpx.AsyncClient, memory: Memory, *contents: str, observer: str = "ana"
) -> list[str]:
    """Store conclusions one at a time (each newer than the last), indexed."""
    ids = []
    for content in contents:
        body = {"conclusions": [{"content": content, "observer_id": observer, "observed_id": "ana"}]}
        response = await client.post(f"{W}/conclusions", json=body)
        assert response.status_code == 201, response.text
        ids.append(response.json()[0]["id"])
    while await drain(memory.writer):
        pass
    return ids


async def peer_id(memory: Memory, name: str) -> tuple[str, str]:
    async with memory.database.transaction() as db:
        row = (await db.execute(select(User.app_id, User.id).where(User.name == name))).one()
    return row.app_id, row.id


async def rows(memory: Memory, ids: list[str]) -> dict[str, Any]:
    async with memory.database.transaction() as db:
        found = await db.execute(select(*record_columns(Document)).where(Document.id.in_(ids)))
        return {row.id: row for row in found}


@pytest.fixture
async def ana(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{W}/sessions/cafe/messages", json={"messages": [{"peer_id": "ana", "content": "hi"}]}
    )
    assert response.status_code == 201, response.text


async def test_a_contradiction_is_superseded_not_deleted_and_the_newer_wins(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    said = await client.post(
        f"{W}/sessions/cafe/messages",
        json={"messages": [{"peer_id": "ana", "content": "I live in Lisbon by the sea"}]},
    )
    lisbon, porto, tea = await conclude(
        client, memory, "Ana lives in Lisbon", "Ana lives in Porto now", "Ana drinks green tea"
    )
    async with memory.database.transaction() as db:  # the Lisbon conclusion was drawn from that message
        await db.execute(
            update(Document)
            .where(Document.id == lisbon)
            .values(metadata_={"message_ids": [said.json()[0]["id"]]})
        )
    while await drain(memory.writer):
        pass
    app_id, ana_id = await peer_id(memory, "ana")
    chat_llm = client._transport.app.state.dialectic_llm  # type: ignore[attr-defined]
    # the model may give the pair in either order: the older by date is the one superseded
    llm = ScriptedLLM([verdict([(2, 1)], [("Ana lives in Portugal", [2])])])
    result = await Dreamer(memory, llm).dream(app_id, ana_id, ana_id)
    assert (result.superseded, result.deduced, result.card) == (1, 1, True)
    assert "1. [" in llm.prompts[0][1].content and "Ana lives in Lisbon" in llm.prompts[0][1].content

    stored = await rows(memory, [lisbon, porto, tea])
    assert stored[lisbon].invalid_at is not None and stored[lisbon].superseded_by == porto
    assert stored[porto].invalid_at is None and stored[tea].invalid_at is None
    listed = (await client.post(f"{W}/conclusions/list", json={})).json()["items"]
    assert "Ana lives in Lisbon" in [c["content"] for c in listed], "superseded, never deleted"
    deduced = next(c for c in listed if c["content"] == "Ana lives in Portugal")
    assert deduced["level"] == "deductive"
    async with memory.database.transaction() as db:
        premises = (await db.execute(select(Document.metadata_).where(Document.id == deduced["id"]))).scalar()
    assert premises["premises"] == [porto]

    representation = (await client.post(f"{W}/peers/ana/representation", json={})).json()["representation"]
    assert "Ana lives in Porto now" in representation and "Lisbon" not in representation
    query = {
        "query": "where does ana live",
        "top_k": 5,
        "filters": {"observer_id": "ana", "observed_id": "ana"},
    }
    found = [c["content"] for c in (await client.post(f"{W}/conclusions/query", json=query)).json()]
    assert "Ana lives in Porto now" in found and "Ana lives in Lisbon" not in found
    history = (await client.get(f"{W}/peers/ana/history")).json()
    assert [(h["content"], h["replacement"]) for h in history] == [
        ("Ana lives in Lisbon", "Ana lives in Porto now")
    ]
    card = (await client.get(f"{W}/peers/ana/card")).json()["peer_card"]
    assert "Ana lives in Lisbon" not in card and "Ana lives in Porto now" in card

    answer = await client.post(f"{W}/peers/ana/chat", json={"query": "Where does Ana live?"})
    assert answer.json() == {"content": ANSWER}
    prompt = chat_llm.prompts[-1][1].content
    facts, history = prompt.split("Facts about ana")[1].split("No longer true")
    assert "] Ana lives in Porto now" in facts and "Lisbon" not in facts, "the superseded one is no fact"
    assert "] Ana lives in Lisbon" in history, "it is shown as history, apart"
    assert "I live in Lisbon by the sea" not in prompt, "the message it came from is old news now"


async def test_unrelated_or_undated_pairs_are_not_superseded(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    ids = await conclude(client, memory, "Ana drinks green tea", "Ana plays the cello on Sundays")
    app_id, ana_id = await peer_id(memory, "ana")
    llm = ScriptedLLM([verdict([(1, 2), (1, 7), (2, 2)])])
    result = await Dreamer(memory, llm).dream(app_id, ana_id, ana_id)
    assert result.superseded == 0
    assert all(row.invalid_at is None for row in (await rows(memory, ids)).values())


async def test_near_duplicates_merge_into_the_most_reinforced_without_a_model_call(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    first, second = await conclude(client, memory, "Ana lives in Porto", "ana lives in porto!")
    app_id, ana_id = await peer_id(memory, "ana")
    llm = ScriptedLLM([])  # one conclusion left after the merge: nothing to ask
    result = await Dreamer(memory, llm, DreamSettings(duplicate_similarity=0.95)).dream(
        app_id, ana_id, ana_id
    )
    assert result.merged == 1 and llm.prompts == []
    stored = await rows(memory, [first, second])
    assert stored[second].superseded_by == first and stored[first].metadata_["times_derived"] == 2


async def test_a_card_set_through_the_api_is_never_overwritten(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    await conclude(client, memory, "Ana lives in Porto", "Ana drinks green tea")
    assert (
        await client.put(f"{W}/peers/ana/card", json={"peer_card": ["Ana: set by the app"]})
    ).status_code == 200
    app_id, ana_id = await peer_id(memory, "ana")
    result = await Dreamer(memory, ScriptedLLM([verdict()])).dream(app_id, ana_id, ana_id)
    assert result.card is False
    assert (await client.get(f"{W}/peers/ana/card")).json()["peer_card"] == ["Ana: set by the app"]


async def test_schedule_dream_queues_once_and_a_worker_runs_it(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    lisbon, porto = await conclude(client, memory, "Ana lives in Lisbon", "Ana lives in Porto now")
    body = {"observer": "ana", "dream_type": "omni"}
    assert (await client.post(f"{W}/schedule_dream", json=body)).status_code == 204
    assert (await client.post(f"{W}/schedule_dream", json=body)).status_code == 204
    missing = await client.post(f"{W}/schedule_dream", json={**body, "observed": "nobody"})
    assert missing.status_code == 404
    async with memory.database.transaction() as db:
        assert (await dreams.counts(db))["pending"] == 1, "one open dream per pair"

    llm = ScriptedLLM([verdict([(1, 2)])])
    worker = QueueWorker(DreamSource(Dreamer(memory, llm), DreamSettings(), lease_s=60, outages=OUTAGES))
    assert await worker.run_once() == "done"
    assert await worker.run_once() == "idle"
    async with memory.database.transaction() as db:
        done = (await db.execute(select(Dream))).one()
    assert done.status == "done" and done.result["superseded"] == 1
    health = (await client.get("/health")).json()
    assert health["dreams"] == {"pending": 0, "running": 0, "done": 1, "failed": 0}
    assert (await rows(memory, [lisbon]))[lisbon].superseded_by == porto


async def test_a_failing_dream_is_retried_then_marked_failed_and_a_lost_lease_stores_nothing(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    lisbon, _ = await conclude(client, memory, "Ana lives in Lisbon", "Ana lives in Porto now")
    app_id, ana_id = await peer_id(memory, "ana")
    async with memory.database.transaction() as db:
        await dreams.request(db, app_id, ana_id, ana_id, reason="requested")
    source = DreamSource(
        Dreamer(memory, ScriptedLLM(["not json"] * 4)),
        DreamSettings(max_attempts=2),
        lease_s=60,
        outages=OUTAGES,
    )
    worker = QueueWorker(source)
    assert await worker.run_once() == "failed"
    async with memory.database.transaction() as db:
        await db.execute(update(Dream).values(not_before=Dream.created_at))  # skip the backoff
    assert await worker.run_once() == "failed"
    async with memory.database.transaction() as db:
        failed = (await db.execute(select(Dream))).one()
    assert failed.status == "failed" and "LLMOutputError" in failed.error and failed.attempts == 2

    async with memory.database.transaction() as db:
        await dreams.request(db, app_id, ana_id, ana_id, reason="requested")
        held = await dreams.claim(db, lease_s=60)
        assert held is not None
        await db.execute(update(Dream).where(Dream.id == held.id).values(token="someone else"))
    with pytest.raises(LeaseLost):
        await Dreamer(memory, ScriptedLLM([verdict([(1, 2)])])).dream(app_id, ana_id, ana_id, claim=held)
    assert (await rows(memory, [lisbon]))[lisbon].invalid_at is None, "a lost lease stores nothing"


async def test_the_scheduler_queues_quiet_pairs_with_enough_new_conclusions(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    await conclude(client, memory, "Ana lives in Porto", "Ana drinks green tea")
    assert (await client.post(f"{W}/peers", json={"id": "bo"})).status_code == 201
    await conclude(client, memory, "Ana seems shy", observer="bo")
    async with memory.database.transaction() as db:
        assert await dreams.schedule_due(db, threshold=2, idle_s=3600) == 0, "not quiet yet"
        assert await dreams.schedule_due(db, threshold=2, idle_s=0) == 1, "ana by ana; bo holds one only"
        assert await dreams.schedule_due(db, threshold=2, idle_s=0) == 0, "already queued"
        queued = (await db.execute(select(Dream.reason))).scalars().all()
    assert queued == ["scheduled"]
    assert (await client.put(W, json={"configuration": {"dream": {"enabled": False}}})).status_code == 200
    async with memory.database.transaction() as db:
        await db.execute(update(Dream).values(status="done"))
    await conclude(client, memory, "Ana runs", "Ana swims")
    async with memory.database.transaction() as db:
        assert await dreams.schedule_due(db, threshold=2, idle_s=0) == 0, "the workspace turned dreams off"


async def test_a_dream_of_a_pair_that_holds_nothing_is_done_and_makes_nothing(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    assert (await client.post(f"{W}/peers", json={"id": "bo"})).status_code == 201
    body = {"observer": "bo", "observed": "ana", "dream_type": "omni"}
    assert (await client.post(f"{W}/schedule_dream", json=body)).status_code == 204
    worker = QueueWorker(
        DreamSource(Dreamer(memory, ScriptedLLM([])), DreamSettings(), lease_s=60, outages=OUTAGES)
    )
    assert await worker.run_once() == "done"
    async with memory.database.transaction() as db:
        assert (await db.execute(select(Dream.status))).scalar() == "done"
        assert (
            await db.execute(select(Collection.name).where(Collection.name.like("observer:%")))
        ).first() is None


async def test_a_deduction_from_a_superseded_premise_is_not_written(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    await conclude(client, memory, "Ana lives in Lisbon", "Ana lives in Porto now")
    app_id, ana_id = await peer_id(memory, "ana")
    llm = ScriptedLLM(
        [verdict([(1, 2)], [("Ana speaks Portuguese in Lisbon", [1]), ("Ana lives in Portugal", [2])])]
    )
    result = await Dreamer(memory, llm).dream(app_id, ana_id, ana_id)
    assert (result.superseded, result.deduced) == (1, 1)
    listed = [c["content"] for c in (await client.post(f"{W}/conclusions/list", json={})).json()["items"]]
    assert "Ana lives in Portugal" in listed and "Ana speaks Portuguese in Lisbon" not in listed


async def test_a_merge_keeps_a_reinforcement_made_while_the_model_thought(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    keeper, _, _ = await conclude(
        client, memory, "Ana lives in Porto", "ana lives in porto!", "Ana drinks tea"
    )
    app_id, ana_id = await peer_id(memory, "ana")

    async def reinforce() -> None:
        async with memory.database.transaction() as db:
            await db.execute(
                update(Document)
                .where(Document.id == keeper)
                .values(metadata_={"times_derived": 5, "message_ids": ["m1"]})
            )

    class Meanwhile(ScriptedLLM):
        async def _complete(self, messages: Any, max_tokens: int, temperature: float, schema: Any) -> Any:
            await reinforce()  # the deriver reinforces the keeper between the dream's read and its write
            return await super()._complete(messages, max_tokens, temperature, schema)

    result = await Dreamer(memory, Meanwhile([verdict()])).dream(app_id, ana_id, ana_id)
    assert result.merged == 1
    assert (await rows(memory, [keeper]))[keeper].metadata_["times_derived"] == 6


async def test_the_workspace_can_turn_derived_cards_off(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    await conclude(client, memory, "Ana lives in Porto", "Ana drinks green tea")
    assert (await client.put(W, json={"configuration": {"peer_card": {"create": False}}})).status_code == 200
    app_id, ana_id = await peer_id(memory, "ana")
    assert (await Dreamer(memory, ScriptedLLM([verdict()])).dream(app_id, ana_id, ana_id)).card is False
    assert (await client.get(f"{W}/peers/ana/card")).json()["peer_card"] is None
    assert (
        await client.put(f"{W}/peers/ana", json={"configuration": {"peer_card": {"create": True}}})
    ).status_code == 200
    assert (await Dreamer(memory, ScriptedLLM([verdict()])).dream(app_id, ana_id, ana_id)).card is True


async def test_a_dreams_own_deductions_do_not_schedule_another_and_old_dreams_are_dropped(
    client: httpx.AsyncClient, memory: Memory, ana: None
) -> None:
    await conclude(client, memory, "Ana lives in Porto", "Ana drinks green tea")
    app_id, ana_id = await peer_id(memory, "ana")
    llm = ScriptedLLM([verdict([], [("Ana likes Portugal", [1, 2]), ("Ana likes tea in Porto", [1, 2])])])
    assert (await Dreamer(memory, llm).dream(app_id, ana_id, ana_id)).deduced == 2
    async with memory.database.transaction() as db:
        # conclusions, then a dream (its row), then the dream's deductions, in that order in time
        await db.execute(update(Document).values(created_at=func.now() - timedelta(minutes=20)))
        await db.execute(
            update(Document)
            .where(Document.metadata_["source"].astext == "dream")
            .values(created_at=func.now() - timedelta(minutes=5))
        )
        await dreams.request(db, app_id, ana_id, ana_id, reason="requested")
        await db.execute(
            update(Dream).values(
                status="done",
                created_at=func.now() - timedelta(minutes=10),
                finished_at=func.now() - timedelta(days=40),
            )
        )
        assert await dreams.schedule_due(db, threshold=2, idle_s=0) == 0, "two new, both the dream's own"
        await dreams.request(db, app_id, ana_id, ana_id, reason="requested")
        await db.execute(
            update(Dream)
            .where(Dream.status == "pending")
            .values(status="done", finished_at=func.now() - timedelta(days=35))
        )
        assert await dreams.purge_finished(db, older_than_days=30) == 1, (
            "the older goes, the pair's latest stays"
        )
        assert len((await db.execute(select(Dream.id))).all()) == 1
