"""POST .../users/{user_id}/context (a Rapport extension) and POST .../sessions/{session_id}/chat (the
dialectic), in-process over real PostgreSQL and LanceDB, with a scripted LLM; and the honcho-ai==0.2.0
client's ``sessions.chat`` against the same app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from honcho import AsyncHoncho

from deployments.api import create_api
from deployments.api.auth import mint_key
from models.llm import ChatMessage, LLMClient
from models.llm.client import TransientError
from models.llm.scripted import ScriptedLLM
from pipelines.memory import Memory
from storage import sessions
from storage.db import Database
from storage.scopes import Scope
from tests.api.conftest import SECRET, make_settings
from tests.pipelines.knowledge import add_fact, add_summary, say
from tests.storage.factories import Tree, make_tree

ANSWER = "ana lives in Porto since February 2024; before that she lived in Lisbon."
Build = Callable[..., httpx.AsyncClient]


@pytest.fixture
def build(memory: Memory) -> Build:
    """A client of an API over the test's memory, with ``model`` as the dialectic's LLM (None: the
    settings' own, built on first use) and these settings sections."""

    def make(model: LLMClient | None = None, **sections: dict[str, Any]) -> httpx.AsyncClient:
        app = create_api(make_settings(**sections), memory=memory, dialectic_llm=model)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test")

    return make


@pytest.fixture
async def known(memory: Memory, database: Database) -> Tree:
    """ana: two sessions' worth of messages, two conflicting facts, a summary."""
    tree = await make_tree(database, user_name="ana")
    turns = await say(
        memory,
        tree,
        "I moved to Lisbon last spring",
        "How is Lisbon?",
        "Great, though I might move to Porto next year",
        "Exciting!",
    )
    await add_fact(memory, tree, "ana lives in Lisbon", sources=[turns[0]], date="2023-05-08")
    await add_fact(memory, tree, "ana lives in Porto", sources=[turns[2]], date="2024-02-01")
    await add_summary(memory, tree, "SHORT", "ana talked about moving between cities.", after=turns[3])
    return tree


def path(tree: Tree, tail: str) -> str:
    return f"/v1/apps/{tree.app_id}/users/{tree.user_id}{tail}"


# --- context ------------------------------------------------------------------------------------------


async def test_context_shape_best_first_without_overlap(build: Build, known: Tree) -> None:
    async with build() as client:
        response = await client.post(
            path(known, "/context"),
            json={"query": "where does ana live", "session_id": known.session_id, "top_k": 5},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"facts", "messages", "summaries", "recent"}
    facts = body["facts"]
    assert [f["document"]["content"] for f in facts] == ["ana lives in Porto", "ana lives in Lisbon"]
    assert set(facts[0]) == {"document", "score"}
    assert set(facts[0]["document"]) == {
        "id",
        "content",
        "metadata",
        "created_at",
        "collection_id",
        "app_id",
        "user_id",
    }
    assert facts[0]["score"] >= facts[1]["score"]
    assert [s["metamessage_type"] for s in body["summaries"]] == ["honcho_chat_summary_short"]
    assert [m["content"] for m in body["recent"]][-1] == "Exciting!"
    told = {i for f in facts for i in f["document"]["metadata"]["message_ids"]} | {
        m["id"] for m in body["recent"]
    }
    assert not told & {m["message"]["id"] for m in body["messages"]}, "nothing twice"


async def test_context_budget_and_defaults(build: Build, known: Tree) -> None:
    async with build() as client:
        small = (
            await client.post(path(known, "/context"), json={"query": "Lisbon", "max_tokens": 64})
        ).json()
        default = (await client.post(path(known, "/context"), json={"query": "Lisbon"})).json()
    items = [f["document"] for f in small["facts"]] + [m["message"] for m in small["messages"]]
    items += small["summaries"] + small["recent"]
    assert sum(len(i["content"]) // 4 + 8 for i in items) <= 64
    assert len(default["facts"]) == 2 and default["recent"] == [], "no session: no recent messages"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "query"]),
        ({"query": ""}, ["body", "query"]),
        ({"query": "   "}, ["body", "query"]),
        ({"query": "x" * 1001}, ["body", "query"]),
        ({"query": 5}, ["body", "query"]),
        ({"query": "x", "top_k": 0}, ["body", "top_k"]),
        ({"query": "x", "top_k": 51}, ["body", "top_k"]),
        ({"query": "x", "top_k": "5"}, ["body", "top_k"]),
        ({"query": "x", "max_tokens": 10}, ["body", "max_tokens"]),
        ({"query": "x", "max_tokens": 1_000_000}, ["body", "max_tokens"]),
        ({"query": "x", "session_id": ""}, ["body", "session_id"]),
        ({"query": "x", "max_token": 100}, ["body", "max_token"]),
    ],
)
async def test_context_rejects_bad_bodies(build: Build, known: Tree, body: dict, loc: list) -> None:
    async with build() as client:
        response = await client.post(path(known, "/context"), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


async def test_context_unknown_ids_are_404(build: Build, known: Tree, database: Database) -> None:
    other = await make_tree(database, app_name="other", user_name="bo")
    async with build() as client:
        nobody = await client.post(f"/v1/apps/{known.app_id}/users/nope/context", json={"query": "x"})
        foreign = await client.post(
            path(known, "/context"), json={"query": "x", "session_id": other.session_id}
        )
    assert nobody.status_code == 404 and isinstance(nobody.json()["detail"], str)
    assert foreign.status_code == 404


async def test_context_is_scoped_like_every_route_under_a_user(
    build: Build, known: Tree, database: Database
) -> None:
    bo = await make_tree(database, app_name="other", user_name="bo")
    keys = {
        "admin": mint_key(SECRET),
        "app": mint_key(SECRET, Scope(known.app_id)),
        "user": mint_key(SECRET, Scope(known.app_id, known.user_id)),
        "other user": mint_key(SECRET, Scope(bo.app_id, bo.user_id)),
        "session": mint_key(SECRET, Scope(known.app_id, known.user_id, known.session_id)),
    }
    expected = {"admin": 200, "app": 200, "user": 200, "other user": 401, "session": 401}
    async with build(auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        anonymous = await client.post(path(known, "/context"), json={"query": "x"})
        assert anonymous.status_code == 401
        for name, key in keys.items():
            response = await client.post(
                path(known, "/context"), json={"query": "x"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == expected[name], name


# --- chat ---------------------------------------------------------------------------------------------


def chat_path(tree: Tree) -> str:
    return path(tree, f"/sessions/{tree.session_id}/chat")


async def test_chat_answers_from_the_context(build: Build, known: Tree) -> None:
    llm = ScriptedLLM(lambda _: ANSWER)
    async with build(llm) as client:
        response = await client.post(chat_path(known), json={"queries": "Where does ana live?"})
        listed = await client.post(chat_path(known), json={"queries": ["Where does ana live?", "Any plans?"]})
    assert response.status_code == 200 and response.json() == {"content": ANSWER}
    assert listed.status_code == 200 and listed.json() == {"content": ANSWER}
    one, two = (prompt[1].content for prompt in llm.prompts)
    assert one.index("[2024-02-01] ana lives in Porto") < one.index("[2023-05-08] ana lives in Lisbon")
    assert one.endswith("Question: Where does ana live?")
    assert "Questions (answer each):\n- Where does ana live?\n- Any plans?" in two


async def test_chat_streams_raw_text(build: Build, known: Tree) -> None:
    async with (
        build(ScriptedLLM(lambda _: ANSWER)) as client,
        client.stream("POST", chat_path(known), json={"queries": "Where?", "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk async for chunk in response.aiter_text()]
    assert "".join(chunks) == ANSWER, "raw chunks, no `data:` framing"


class _BreaksMidStream(ScriptedLLM):
    async def _stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        yield "ana lives "
        raise TransientError("connection reset")


async def test_chat_errors_before_the_first_chunk_are_json(
    build: Build, known: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    for stream in (False, True):
        async with build(ScriptedLLM([TransientError("overloaded")])) as client:
            down = await client.post(chat_path(known), json={"queries": "x?", "stream": stream})
        assert down.status_code == 503 and "retry" in down.json()["detail"], stream
        assert down.headers["retry-after"] == "5"
        assert down.headers["content-type"] == "application/json"

        # The settings' own LLM: an OpenAI-compatible one without a URL.
        async with build(llm={"provider": "openai"}) as client:
            misconfigured = await client.post(chat_path(known), json={"queries": "x?", "stream": stream})
        assert misconfigured.status_code == 503, stream
        assert (
            "misconfigured" in misconfigured.json()["detail"]
            and "LLM_BASE_URL" in misconfigured.json()["detail"]
        )

        unused = ScriptedLLM([])
        async with build(unused) as client:
            missing = await client.post(
                path(known, "/sessions/nope/chat"), json={"queries": "x?", "stream": stream}
            )
            bad = await client.post(chat_path(known), json={"queries": [], "stream": stream})
            blank = await client.post(chat_path(known), json={"queries": ["ok", " "], "stream": stream})
            many = await client.post(chat_path(known), json={"queries": ["q"] * 11, "stream": stream})
            typed = await client.post(chat_path(known), json={"queries": 5, "stream": stream})
        assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "queries"]
        assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "queries", 1]
        assert many.status_code == 422 and typed.status_code == 422
        assert unused.prompts == [], "no LLM call for a request that cannot be answered"

    caplog.set_level(logging.ERROR, logger="deployments.api.routers.sessions")
    async with build(_BreaksMidStream([])) as client:
        broken = await client.post(chat_path(known), json={"queries": "x?", "stream": True})
    assert broken.status_code == 200 and broken.text == "ana lives ", "what was sent stays sent"
    assert "broke off mid-stream" in caplog.text


async def test_the_settings_llm_is_built_on_the_first_chat_only(
    build: Build, known: Tree, memory: Memory
) -> None:
    local = create_api(make_settings(), memory=memory)  # the default: the in-process local model
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=local), base_url="http://t") as client:
        assert (await client.post(path(known, "/context"), json={"query": "x"})).status_code == 200
    assert not local.state.dialectic_llm.built, "no model is loaded to start the API or to answer context"

    app = create_api(make_settings(llm={"provider": "openai"}), memory=memory)
    lazy = app.state.dialectic_llm
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://rapport.test"
    ) as client:
        await client.post(path(known, "/context"), json={"query": "x"})
        await client.post(chat_path(known), json={"queries": []})
        assert not lazy.built, "starting the API, the context and a rejected chat load no model"
        failed = await client.post(chat_path(known), json={"queries": "x?"})
    assert failed.status_code == 503 and "LLM_BASE_URL" in failed.json()["detail"]
    assert not lazy.built, "a build that failed is not kept: fixing the setting is enough"


# --- the official client ------------------------------------------------------------------------------


async def test_the_honcho_client_chats_with_strings_lists_and_streams(memory: Memory, known: Tree) -> None:
    app = create_api(make_settings(), memory=memory, dialectic_llm=ScriptedLLM(lambda _: ANSWER))
    transport = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rapport.test")
    honcho = AsyncHoncho(base_url="http://rapport.test", http_client=transport, max_retries=0)
    ids = {"app_id": known.app_id, "user_id": known.user_id}
    sessions = honcho.apps.users.sessions

    assert (await sessions.chat(known.session_id, **ids, queries="Where?")).content == ANSWER
    assert (await sessions.chat(known.session_id, **ids, queries=["Where?", "When?"])).content == ANSWER
    assert await sessions.chat(known.session_id, **ids, queries="Where?", stream=True) == ANSWER
    async with sessions.with_streaming_response.chat(
        known.session_id, **ids, queries=["Where?", "When?"], stream=True
    ) as response:
        assert "".join([text async for text in response.iter_text()]) == ANSWER
    await transport.aclose()


# --- a session key sees its session only ------------------------------------------------------------


@pytest.fixture
async def siblings(memory: Memory, database: Database, known: Tree) -> Tree:
    """A second session of ana's (with a message, a fact from it and a summary of it), beside ``known``."""
    async with database.transaction() as db:
        other = await sessions.create_session(db, known.app_id, known.user_id)
    sibling = Tree(known.app_id, known.user_id, other.id)
    turns = await say(memory, sibling, "I keep bees on my roof in Evora", "Bees!")
    await add_fact(memory, sibling, "ana keeps bees in Evora", sources=[turns[0]])
    await add_summary(memory, sibling, "SHORT", "ana talked about her beehives in Evora.", after=turns[1])
    return sibling


async def test_a_session_keys_chat_sees_only_its_session(build: Build, known: Tree, siblings: Tree) -> None:
    llm = ScriptedLLM(lambda _: ANSWER)
    session_key = mint_key(SECRET, Scope(known.app_id, known.user_id, known.session_id))
    user_key = mint_key(SECRET, Scope(known.app_id, known.user_id))
    async with build(llm, auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        for key in (session_key, user_key):
            for stream in (False, True):
                response = await client.post(
                    chat_path(known),
                    json={
                        "queries": "Where does ana live and does she keep bees in Evora?",
                        "stream": stream,
                    },
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert response.status_code == 200, response.text
    own, own_streamed, whole, whole_streamed = (prompt[1].content for prompt in llm.prompts)
    for prompt in (own, own_streamed):
        assert "ana lives in Porto" in prompt, "the session's own facts and messages are there"
        assert "moving between cities" in prompt
        assert "Evora" not in prompt.replace("does she keep bees in Evora?", ""), "nothing of the sibling"
    for prompt in (whole, whole_streamed):
        assert "ana keeps bees in Evora" in prompt, "a user key's chat sees every session"


async def test_a_session_key_reaches_no_sibling_session(
    build: Build, memory: Memory, known: Tree, siblings: Tree
) -> None:
    key = mint_key(SECRET, Scope(known.app_id, known.user_id, known.session_id))
    headers = {"Authorization": f"Bearer {key}"}
    base = path(known, "")
    sibling = f"{base}/sessions/{siblings.session_id}"
    status = f"/v1/apps/{known.app_id}/deriver/status"
    async with build(ScriptedLLM(lambda _: ANSWER), auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        denied = {
            "chat": await client.post(f"{sibling}/chat", json={"queries": "x"}, headers=headers),
            "search": await client.post(f"{sibling}/search", json={"query": "bees"}, headers=headers),
            "user search": await client.post(f"{base}/search", json={"query": "bees"}, headers=headers),
            "clone": await client.get(f"{sibling}/clone", headers=headers),
            "messages": await client.post(f"{sibling}/messages/list", json={}, headers=headers),
            "status": await client.get(
                status, params={"user_id": known.user_id, "session_id": siblings.session_id}, headers=headers
            ),
        }
        own_search = await client.post(
            f"{base}/sessions/{known.session_id}/search", json={"query": "bees Evora"}, headers=headers
        )
        own_status = await client.get(status, headers=headers)
    for name, response in denied.items():
        assert response.status_code == 401, (name, response.status_code, response.text)
    assert own_search.status_code == 200
    assert all(hit["message"]["session_id"] == known.session_id for hit in own_search.json())
    assert own_status.status_code == 200, own_status.text
