"""v3 peer chat (POST /v3/workspaces/{w}/peers/{p}/chat) in-process over real PostgreSQL and LanceDB,
with a scripted LLM: whose memory each chat reads, its session and filters, reasoning levels,
response_format, server-sent events, and a peer key's reach."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from cluster.index_sync import drain
from deployments.api import create_api
from deployments.api.auth import mint_key
from models.llm import LLMClient
from models.llm.client import TransientError, estimate_tokens
from models.llm.scripted import ScriptedLLM
from pipelines.memory import Memory
from storage.workspaces import workspace
from tests.api.conftest import SECRET, make_settings

W = "/v3/workspaces/w"
ANSWER = "Ana lives in Porto; she moved there from Lisbon."
Build = Callable[..., httpx.AsyncClient]


@pytest.fixture
def build(memory: Memory) -> Build:
    def make(model: LLMClient, **sections: dict[str, Any]) -> httpx.AsyncClient:
        app = create_api(make_settings(**sections), memory=memory, dialectic_llm=model)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test")

    return make


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture
async def known(memory: Memory, build: Build) -> AsyncIterator[None]:
    """Workspace w: ana and bo talk in "cafe"; ana and cy in "work". Ana's own conclusions, and what bo
    and cy each concluded about her."""
    async with build(ScriptedLLM([])) as client:
        messages = [
            {"peer_id": "ana", "content": "I moved to Porto in February, I love the river"},
            {"peer_id": "bo", "content": "Porto is lovely, do you miss Lisbon?"},
        ]
        await ok(await client.post(f"{W}/sessions/cafe/messages", json={"messages": messages}), 201)
        messages = [
            {"peer_id": "ana", "content": "My badge still says Lisbon office"},
            {"peer_id": "cy", "content": "I will get you a new badge"},
        ]
        await ok(await client.post(f"{W}/sessions/work/messages", json={"messages": messages}), 201)
        conclusions = [
            {
                "content": "Ana lives in Porto",
                "observer_id": "ana",
                "observed_id": "ana",
                "session_id": "cafe",
            },
            {"content": "Ana seems shy about her move", "observer_id": "bo", "observed_id": "ana"},
            {"content": "Ana needs a new office badge", "observer_id": "cy", "observed_id": "ana"},
        ]
        await ok(await client.post(f"{W}/conclusions", json={"conclusions": conclusions}), 201)
    while await drain(memory.writer):
        pass
    yield


def chat(client: httpx.AsyncClient, peer: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post(
        f"{W}/peers/{peer}/chat", json={"query": "Where does Ana live?", **body}, headers=headers
    )


def prompt_of(llm: ScriptedLLM, call: int = -1) -> str:
    return "\n".join(m.content for m in llm.prompts[call])


async def test_a_peer_is_answered_from_its_own_memory_or_its_view_of_the_target(
    build: Build, known: None
) -> None:
    llm = ScriptedLLM([ANSWER] * 3)
    async with build(llm) as client:
        own = await ok(await chat(client, "ana"))
        bos = await ok(await chat(client, "bo", target="ana"))
        cys = await ok(await chat(client, "cy", target="ana"))
    assert own == {"content": ANSWER} and bos == {"content": ANSWER} and cys == {"content": ANSWER}
    ana, bo, cy = prompt_of(llm, 0), prompt_of(llm, 1), prompt_of(llm, 2)
    assert "Ana lives in Porto" in ana and "shy" not in ana and "Ana needs a new office badge" not in ana
    assert "- ana (" in ana and "- bo (" in ana, "every speaker is named as the conversation names them"
    assert "Ana seems shy about her move" in bo and "Ana lives in Porto" not in bo
    assert "what bo has learned about ana" in bo
    # bo took part in the cafe only: cy's view and the work session's messages are not bo's to read
    assert "badge" not in bo and "I love the river" in bo
    assert "Ana needs a new office badge" in cy and "river" not in cy and "shy" not in cy


async def test_the_session_adds_its_latest_messages_and_filters_limit_recall(
    build: Build, known: None
) -> None:
    llm = ScriptedLLM([ANSWER] * 3)
    async with build(llm) as client:
        await ok(await chat(client, "ana", session_id="work"))
        await ok(await chat(client, "ana", filters={"session_id": ["work"]}))
        await ok(await chat(client, "ana", filters={"session_id": {"in": ["cafe", "gone"]}}))
    in_work = prompt_of(llm, 0)
    assert "The latest messages of this conversation:" in in_work
    assert "I will get you a new badge" in in_work.split("The latest messages of this conversation:")[1]
    only_work = prompt_of(llm, 1)
    assert "river" not in only_work and "Ana lives in Porto" not in only_work, "cafe is outside the filter"
    only_cafe = prompt_of(llm, 2)
    assert "Ana lives in Porto" in only_cafe and "badge" not in only_cafe


async def test_bad_requests_are_refused_before_any_llm_call(build: Build, known: None) -> None:
    llm = ScriptedLLM([])
    async with build(llm) as client:
        cases = {
            "unknown target": (await chat(client, "ana", target="nobody"), 404),
            "unknown session": (await chat(client, "ana", session_id="nope"), 404),
            "unknown workspace": (
                await client.post("/v3/workspaces/x/peers/a/chat", json={"query": "q"}),
                404,
            ),
            "blank query": (await chat(client, "ana", query=""), 422),
            "long query": (await chat(client, "ana", query="x" * 10_001), 422),
            "level": (await chat(client, "ana", reasoning_level="extreme"), 422),
            "filter key": (await chat(client, "ana", filters={"peer_id": "bo"}), 422),
            "filter shape": (await chat(client, "ana", filters={"session_id": 5}), 422),
            "session outside filter": (
                await chat(client, "ana", session_id="cafe", filters={"session_id": "work"}),
                422,
            ),
            "schema root": (await chat(client, "ana", response_format={"type": "array"}), 422),
            "schema keyword": (
                await chat(
                    client, "ana", response_format={"type": "object", "properties": {"a": {"not": {}}}}
                ),
                422,
            ),
        }
    for case, (response, status) in cases.items():
        assert response.status_code == status, (case, response.text)
    schema_error = cases["schema keyword"][0].json()["detail"][0]
    assert schema_error["loc"] == ["body", "response_format"] and "'not'" in schema_error["msg"]
    assert cases["filter key"][0].json()["detail"][0]["loc"] == ["body", "filters"]
    assert llm.prompts == []


async def test_a_new_observer_is_made_and_told_nothing_is_known(build: Build, known: None) -> None:
    llm = ScriptedLLM(["I don't know."])
    async with build(llm) as client:
        assert await ok(await chat(client, "newcomer")) == {"content": "I don't know."}
        peers = await ok(await client.post(f"{W}/peers/list", json={}))
    assert "newcomer" in [p["id"] for p in peers["items"]]
    assert "Nothing is known about newcomer yet" in prompt_of(llm)


async def test_reasoning_levels_set_depth_and_rewriting(build: Build, known: None) -> None:
    rewrite = json.dumps({"queries": ["Porto river", "moving cities"]})
    llm = ScriptedLLM([ANSWER, ANSWER, rewrite, ANSWER])
    async with build(llm, dialectic={"top_k": 4, "context_tokens": 1000}) as client:
        await ok(await chat(client, "ana", reasoning_level="minimal"))
        await ok(await chat(client, "ana"))
        await ok(await chat(client, "ana", reasoning_level="max"))
    assert llm.schemas == [None, None, "SearchQueries", None], "minimal and low ask once; max rewrites first"


async def test_response_format_gives_json_of_the_callers_schema(build: Build, known: None) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "since month": {"type": ["string", "null"]},
            "confidence": {"enum": ["low", "high"]},
        },
        "required": ["city", "confidence"],
        "additionalProperties": False,
    }
    good = json.dumps({"city": "Porto", "since month": "February", "confidence": "high"})
    llm = ScriptedLLM(['{"city": "Porto"}', good, good, "not json", "still not"])
    async with build(llm) as client:
        repaired = await ok(await chat(client, "ana", response_format=schema))
        async with client.stream(
            "POST", f"{W}/peers/ana/chat", json={"query": "Where?", "response_format": schema, "stream": True}
        ) as streamed:
            events = [line async for line in streamed.aiter_lines() if line]
        broken = await chat(client, "ana", response_format=schema)
    assert json.loads(repaired["content"]) == json.loads(good)
    assert llm.schemas[:2] == ["Answer1", "Answer1"], "the model is held to the schema, and shown it"
    assert '"since month"' in prompt_of(llm, 0)
    assert [json.loads(e.removeprefix("data: ")) for e in events] == [
        {"delta": {"content": repaired["content"]}, "done": False},
        {"done": True},
    ]
    assert broken.status_code == 503 and "retry" in broken.json()["detail"]


async def test_a_streamed_answer_is_server_sent_events_ending_with_done(build: Build, known: None) -> None:
    llm = ScriptedLLM([ANSWER])
    async with (
        build(llm) as client,
        client.stream(
            "POST", f"{W}/peers/bo/chat", json={"query": "Ana?", "target": "ana", "stream": True}
        ) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join([chunk async for chunk in r.aiter_text()])
    events = [json.loads(e.removeprefix("data: ")) for e in body.split("\n\n") if e]
    assert events[-1] == {"done": True} and len(events) > 2
    assert all(e["done"] is False and set(e["delta"]) == {"content"} for e in events[:-1])
    assert "".join(e["delta"]["content"] for e in events[:-1]) == ANSWER


async def test_an_llm_outage_before_the_first_event_is_a_json_503(build: Build, known: None) -> None:
    llm = ScriptedLLM([TransientError("model server down"), TransientError("model server down")])
    async with build(llm) as client:
        for stream in (False, True):
            down = await chat(client, "ana", stream=stream)
            assert down.status_code == 503 and down.headers["content-type"] == "application/json"


async def test_a_peer_key_chats_over_its_own_sessions_only(build: Build, known: None) -> None:
    admin = {"Authorization": f"Bearer {mint_key(SECRET)}"}
    llm = ScriptedLLM([ANSWER] * 3)
    async with build(llm, auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        minted = await ok(
            await client.post("/v3/keys", params={"workspace_id": "w", "peer_id": "bo"}, headers=admin)
        )
        bo = {"Authorization": f"Bearer {minted['key']}"}
        assert (await chat(client, "bo", target="ana", session_id="cafe", headers=bo)).status_code == 200
        cases = [
            client.post(f"{W}/peers/bo/chat", json={"query": "q", "session_id": "work"}, headers=bo),
            client.post(
                f"{W}/peers/bo/chat", json={"query": "q", "filters": {"session_id": "work"}}, headers=bo
            ),
            client.post(f"{W}/peers/ana/chat", json={"query": "q"}, headers=bo),
        ]
        for call in cases:
            assert (await call).status_code == 401
        assert (await chat(client, "ana", session_id="work", headers=admin)).status_code == 200


async def test_tokens_are_counted_for_the_app_streamed_or_not(
    build: Build, known: None, memory: Memory
) -> None:
    from tests.api.test_metrics import scrape, value

    async with memory.database.transaction() as db:
        app = await workspace(db, "w")

    def tokens(samples: Any, direction: str) -> float:
        return value(
            samples, "rapport_llm_app_tokens_total", app_id=app.id, part="dialectic", direction=direction
        )

    llm = ScriptedLLM([ANSWER, ANSWER])
    async with build(llm) as client:
        before = await scrape(client)
        await ok(await chat(client, "ana"))
        after_whole = await scrape(client)
        async with client.stream(
            "POST", f"{W}/peers/ana/chat", json={"query": "Where?", "stream": True}
        ) as r:
            assert [line async for line in r.aiter_lines() if line][-1] == 'data: {"done": true}'
        after_stream = await scrape(client)
    assert tokens(after_whole, "completion") - tokens(before, "completion") == len(ANSWER.split())
    assert tokens(after_whole, "prompt") > tokens(before, "prompt")
    streamed = tokens(after_stream, "completion") - tokens(after_whole, "completion")
    assert streamed == estimate_tokens(ANSWER), "a streamed answer is counted by estimate, once it ends"
    assert tokens(after_stream, "prompt") > tokens(after_whole, "prompt")


async def test_a_peer_that_left_a_session_reads_no_more_of_it(build: Build, known: None) -> None:
    llm = ScriptedLLM([ANSWER, ANSWER])
    async with build(llm) as client:
        await ok(await chat(client, "bo", target="ana"))
        left = await client.request("DELETE", f"{W}/sessions/cafe/peers", json=["bo"])
        assert left.status_code == 200, left.text
        await ok(await chat(client, "bo", target="ana"))
    assert "I love the river" in prompt_of(llm, 0)
    assert "I love the river" not in prompt_of(llm, 1), "bo left the cafe"
