"""Bad input for every resource gets its documented status, a detail that says why, and changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from storage.db import Database
from tests.api.conftest import snapshot

LONG = "x" * 101
BIG = {"blob": "x" * (2 * 1024 * 1024)}  # over the default 2 MiB body limit


@dataclass
class World:
    app: str
    user: str
    session: str
    message: str
    metamessage: str
    collection: str
    document: str
    other_app: str
    other_user: str  # a user of other_app
    other_session: str


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    async def post(path: str, body: dict) -> dict:
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        return response.json()

    app = (await post("/v1/apps", {"name": "app"}))["id"]
    user = (await post(f"/v1/apps/{app}/users", {"name": "user"}))["id"]
    u = f"/v1/apps/{app}/users/{user}"
    session = (await post(f"{u}/sessions", {}))["id"]
    message = (await post(f"{u}/sessions/{session}/messages", {"content": "hello", "is_user": True}))["id"]
    meta = (
        await post(f"{u}/metamessages", {"metamessage_type": "t", "content": "c", "session_id": session})
    )["id"]
    collection = (await post(f"{u}/collections", {"name": "notes"}))["id"]
    document = (await post(f"{u}/collections/{collection}/documents", {"content": "doc"}))["id"]
    other_app = (await post("/v1/apps", {"name": "other"}))["id"]
    other_user = (await post(f"/v1/apps/{other_app}/users", {"name": "user"}))["id"]
    other_session = (await post(f"/v1/apps/{other_app}/users/{other_user}/sessions", {}))["id"]
    return World(
        app, user, session, message, meta, collection, document, other_app, other_user, other_session
    )


U = "/v1/apps/{w.app}/users/{w.user}"
S = U + "/sessions/{w.session}"
C = U + "/collections/{w.collection}"

# (method, path template, JSON body, expected status). Templates are filled from the World.
CASES: list[tuple[str, str, Any, int]] = [
    # apps
    ("POST", "/v1/apps", {"name": LONG}, 422),
    ("POST", "/v1/apps", {"name": ""}, 422),
    ("POST", "/v1/apps", {"name": 7}, 422),
    ("POST", "/v1/apps", {"name": "ok", "metadata": [1, 2]}, 422),
    ("POST", "/v1/apps", {"name": "ok", "metadata": "text"}, 422),
    ("POST", "/v1/apps", {"name": "app"}, 409),
    ("POST", "/v1/apps", {"name": "ok", "metadata": BIG}, 413),
    ("PUT", "/v1/apps/{w.app}", {"name": LONG}, 422),
    ("PUT", "/v1/apps/{w.app}", {"name": "other"}, 409),
    ("PUT", "/v1/apps/{w.app}", {"metadata": 5}, 422),
    ("PUT", "/v1/apps/no-such-app", {"name": "z"}, 404),
    ("GET", "/v1/apps?app_id=no-such-app", None, 404),
    ("GET", "/v1/apps/name/no-such-app", None, 404),
    ("GET", "/v1/apps/get_or_create/" + LONG, None, 422),
    ("POST", "/v1/apps/list", {"filter": "text"}, 422),
    ("POST", "/v1/apps/list?size=101", None, 422),
    ("POST", "/v1/apps/list?page=0", None, 422),
    # users
    ("POST", "/v1/apps/{w.app}/users", {"name": LONG}, 422),
    ("POST", "/v1/apps/{w.app}/users", {"name": "ok", "metadata": []}, 422),
    ("POST", "/v1/apps/{w.app}/users", {"name": "user"}, 409),
    ("POST", "/v1/apps/no-such-app/users", {"name": "ok"}, 404),
    ("POST", "/v1/apps/{w.app}/users", {"name": "ok", "metadata": BIG}, 413),
    ("PUT", U, {"name": LONG}, 422),
    ("PUT", U, {"metadata": True}, 422),
    ("PUT", "/v1/apps/{w.other_app}/users/{w.user}", {"name": "moved"}, 404),
    ("GET", "/v1/apps/{w.app}/users?user_id={w.other_user}", None, 404),
    ("GET", "/v1/apps/{w.app}/users/get_or_create/" + LONG, None, 422),
    ("GET", "/v1/apps/no-such-app/users/get_or_create/x", None, 404),
    ("POST", "/v1/apps/no-such-app/users/list", None, 404),
    # sessions
    ("POST", U + "/sessions", {"metadata": "text"}, 422),
    ("POST", "/v1/apps/{w.other_app}/users/{w.user}/sessions", {}, 404),
    ("POST", U + "/sessions", {"metadata": BIG}, 413),
    ("PUT", S, {}, 422),
    ("PUT", S, {"metadata": [1]}, 422),
    ("PUT", U + "/sessions/{w.other_session}", {"metadata": {}}, 404),
    ("DELETE", U + "/sessions/no-such-session", None, 404),
    ("GET", S + "/clone?message_id=no-such-message", None, 404),
    ("POST", U + "/sessions/list", {"is_active": "sometimes"}, 422),
    # messages
    ("POST", S + "/messages", {"content": "x" * 50_001, "is_user": True}, 422),
    ("POST", S + "/messages", {"content": "hi", "is_user": "maybe"}, 422),
    ("POST", S + "/messages", {"content": "hi"}, 422),
    ("POST", S + "/messages", {"content": "hi", "is_user": True, "metadata": 1}, 422),
    ("POST", S + "/messages", {"content": "hi", "is_user": True, "metadata": BIG}, 413),
    ("POST", U + "/sessions/{w.other_session}/messages", {"content": "hi", "is_user": True}, 404),
    ("POST", S + "/messages/batch", {"messages": [{"content": "a", "is_user": True}] * 101}, 422),
    ("POST", S + "/messages/batch", {"messages": [{"content": "a", "is_user": True}, {"content": 1}]}, 422),
    ("PUT", S + "/messages/{w.message}", {"metadata": "text"}, 422),
    ("GET", S + "/messages/no-such-message", None, 404),
    ("GET", U + "/sessions/bad%00id/messages/{w.message}", None, 404),  # a NUL can't be an id: not found
    ("PUT", "/v1/apps/{w.app}/users/bad%00id", {"name": "z"}, 404),
    ("GET", U + "/sessions/{w.other_session}/messages/{w.message}", None, 404),
    # metamessages
    ("POST", U + "/metamessages", {"metamessage_type": "x" * 51, "content": "c"}, 422),
    (
        "POST",
        U + "/metamessages",
        {"metamessage_type": "t", "content": "c", "message_id": "{w.message}"},
        422,
    ),
    (
        "POST",
        U + "/metamessages",
        {"metamessage_type": "t", "content": "c", "session_id": "{w.other_session}"},
        404,
    ),
    ("POST", U + "/metamessages", {"metamessage_type": "t", "content": "c", "metadata": BIG}, 413),
    ("PUT", U + "/metamessages/{w.metamessage}", {"metadata": []}, 422),
    ("PUT", U + "/metamessages/{w.metamessage}", {"metamessage_type": LONG}, 422),
    ("PUT", U + "/metamessages/no-such", {"metadata": {}}, 404),
    ("GET", U + "/metamessages/no-such", None, 404),
    ("POST", U + "/metamessages/list", {"session_id": "bad\u0000id"}, 404),
    ("POST", U + "/metamessages/list", {"metamessage_type": "x" * 51}, 422),
    # text that JSON allows but PostgreSQL (UTF-8) cannot store: a lone surrogate
    ("POST", "/v1/apps", {"name": "half \ud800 pair"}, 422),
    ("POST", U + "/sessions", {"metadata": {"k": "\ud800"}}, 422),
    ("POST", S + "/messages", {"content": "\udfff", "is_user": True}, 422),
    ("POST", C + "/documents", {"content": "\ud800"}, 422),
    ("POST", U + "/search", {"query": "\ud800"}, 422),
    ("POST", C + "/documents/query", {"query": "\ud800"}, 422),
    # collections
    ("POST", U + "/collections", {"name": LONG}, 422),
    ("POST", U + "/collections", {"name": "honcho"}, 422),
    ("POST", U + "/collections", {"name": "notes"}, 409),
    ("POST", U + "/collections", {"name": "ok", "metadata": "x"}, 422),
    ("POST", U + "/collections", {"name": "ok", "metadata": BIG}, 413),
    ("PUT", C, {"name": "HONCHO"}, 422),
    ("PUT", C, {}, 422),
    ("PUT", U + "/collections/no-such", {"name": "n"}, 404),
    ("DELETE", U + "/collections/no-such", None, 404),
    ("GET", U + "/collections/name/no-such", None, 404),
    # documents
    ("POST", C + "/documents", {"content": ""}, 422),
    ("POST", C + "/documents", {"content": "x" * 100_001}, 422),
    ("POST", C + "/documents", {"content": "ok", "metadata": [1]}, 422),
    ("POST", C + "/documents", {"content": "ok", "metadata": BIG}, 413),
    ("POST", U + "/collections/no-such/documents", {"content": "ok"}, 404),
    ("PUT", C + "/documents/{w.document}", {}, 422),
    ("PUT", C + "/documents/{w.document}", {"content": ""}, 422),
    ("PUT", C + "/documents/no-such", {"content": "new"}, 404),
    ("DELETE", C + "/documents/no-such", None, 404),
    ("POST", C + "/documents/list", {"filter": 3}, 422),
    ("POST", C + "/documents/query", {"query": ""}, 422),
    ("POST", C + "/documents/query", {"query": "q", "top_k": 51}, 422),
    ("POST", C + "/documents/query", {"query": "q", "filter": "text"}, 422),
    ("POST", U + "/collections/no-such/documents/query", {"query": "q"}, 404),
    # search (a Rapport extension)
    ("POST", U + "/search", {"query": ""}, 422),
    ("POST", U + "/search", {"query": "x" * 1001}, 422),
    ("POST", U + "/search", {"query": "x", "mode": "magic"}, 422),
    ("POST", U + "/search", {"query": "x", "top_k": 101}, 422),
    ("POST", U + "/search", {"query": "x", "filter": []}, 422),
    ("POST", U + "/sessions/{w.other_session}/search", {"query": "x"}, 404),
    ("POST", "/v1/apps/{w.other_app}/users/{w.user}/search", {"query": "x"}, 404),
]


@pytest.mark.parametrize(
    ("method", "template", "body", "status"), CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES]
)
async def test_bad_input_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    database: Database,
    world: World,
    method: str,
    template: str,
    body: Any,
    status: int,
) -> None:
    path = template.format(w=world)
    if isinstance(body, dict):  # ids inside bodies are templates too
        body = {k: v.format(w=world) if isinstance(v, str) and "{w." in v else v for k, v in body.items()}
    before = await snapshot(database)

    # json.dumps escapes to ASCII, so a lone surrogate travels as the JSON escape a client would send.
    content = None if body is None else json.dumps(body)
    response = await client.request(
        method, path, content=content, headers={"content-type": "application/json"}
    )

    assert response.status_code == status, response.text
    assert_error_shape(response)
    assert await snapshot(database) == before


def assert_error_shape(response: httpx.Response) -> None:
    """A 422 lists what is wrong where, as the contract's HTTPValidationError; any other error says what
    to fix in one string."""
    detail = response.json()["detail"]
    assert detail, "every error says what went wrong"
    if response.status_code == 422:
        assert isinstance(detail, list), response.text
        for error in detail:
            assert set(error) == {"loc", "msg", "type"}, error
            assert error["loc"] and error["loc"][0] in ("body", "query", "path"), error
            assert error["msg"] and error["type"], error
    else:
        assert isinstance(detail, str), response.text


# Rapport's own checks (beyond the schema), each with the field its 422 must name.
OWN_CHECKS: list[tuple[str, str, Any, list[str | int]]] = [
    ("POST", "/v1/apps", {"name": "half \ud800 pair"}, ["body", "name"]),
    ("PUT", "/v1/apps/{w.app}", {"metadata": {"k": "\u0000"}}, ["body", "metadata"]),
    ("POST", "/v1/apps/list", {"filter": {"\u0000": 1}}, ["body", "filter"]),
    ("GET", "/v1/apps", None, ["query", "app_id"]),  # no app_id, and the key names no app
    ("GET", "/v1/apps/{w.app}/users", None, ["query", "user_id"]),
    ("GET", U + "/sessions", None, ["query", "session_id"]),
    ("GET", U + "/collections", None, ["query", "collection_id"]),
    ("POST", U + "/sessions", {"metadata": {"k": "\udfff"}}, ["body", "metadata"]),
    ("POST", S + "/messages", {"content": "\u0000", "is_user": True}, ["body", "content"]),
    (
        "POST",
        S + "/messages/batch",
        {"messages": [{"content": "ok", "is_user": True}, {"content": "\ud800", "is_user": False}]},
        ["body", "messages", 1, "content"],
    ),
    ("POST", S + "/messages/batch", {"messages": []}, ["body", "messages"]),
    (
        "POST",
        U + "/metamessages",
        {"metamessage_type": "\u0000", "content": "c"},
        ["body", "metamessage_type"],
    ),
    (
        "POST",
        U + "/metamessages",
        {"metamessage_type": "t", "content": "c", "message_id": "{w.message}"},
        ["body", "session_id"],
    ),
    ("POST", U + "/collections", {"name": "honcho"}, ["body", "name"]),
    ("PUT", C, {}, ["body"]),
    ("PUT", C + "/documents/{w.document}", {}, ["body"]),
    ("POST", C + "/documents", {"content": "\ud800"}, ["body", "content"]),
    ("POST", C + "/documents/query", {"query": "\ud800"}, ["body", "query"]),
    ("POST", U + "/search", {"query": "ok", "filter": {"k": "\u0000"}}, ["body", "filter"]),
    ("POST", C + "/documents/query", {"query": "ok", "filter": {"\u0000": 1}}, ["body", "filter"]),
]


@pytest.mark.parametrize(
    ("method", "template", "raw", "loc"), OWN_CHECKS, ids=[f"{c[0]} {c[1]} {c[3]}" for c in OWN_CHECKS]
)
async def test_rapports_own_checks_answer_422_like_the_schemas_do(
    client: httpx.AsyncClient, world: World, method: str, template: str, raw: Any, loc: list[str | int]
) -> None:
    # json.dumps escapes NULs and lone surrogates to ASCII, as a client's JSON encoder would.
    content = None if raw is None else json.dumps(raw).replace("{w.message}", world.message)
    response = await client.request(
        method, template.format(w=world), content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert_error_shape(response)
    assert [e["loc"] for e in response.json()["detail"]] == [loc]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (S + "/messages", {"content": "hi", "is_user": 0}, ["body", "is_user"]),
        (
            S + "/messages/batch",
            {"messages": [{"content": "hi", "is_user": 1}]},
            ["body", "messages", 0, "is_user"],
        ),
        (U + "/sessions/list", {"is_active": 0}, ["body", "is_active"]),
        ("/v1/apps", {"name": 7}, ["body", "name"]),
        (C + "/documents/query", {"query": "q", "top_k": "5"}, ["body", "top_k"]),
        (C + "/documents/query", {"query": "q", "top_k": 5.5}, ["body", "top_k"]),
        (U + "/search", {"query": "q", "top_k": True}, ["body", "top_k"]),
    ],
    ids=[
        "is_user-0",
        "batch-is_user-1",
        "is_active-0",
        "name-number",
        "top_k-text",
        "top_k-float",
        "top_k-bool",
    ],
)
async def test_bodies_take_json_types_as_the_contract_declares(
    client: httpx.AsyncClient, database: Database, world: World, path: str, body: Any, field: list
) -> None:
    before = await snapshot(database)
    response = await client.post(path.format(w=world), json=body)
    assert response.status_code == 422, response.text
    assert field in [e["loc"] for e in response.json()["detail"]]
    assert await snapshot(database) == before


async def test_query_parameters_keep_their_text_parsing(client: httpx.AsyncClient, world: World) -> None:
    listed = await client.post(U.format(w=world) + "/sessions/list?reverse=1&page=1&size=5")
    assert listed.status_code == 200, listed.text
    assert listed.json()["size"] == 5


@pytest.mark.parametrize("body", [b'{"name": ', b'{"name": "caf\xe9"}'], ids=["truncated", "not-utf-8"])
async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient, world: World, body: bytes) -> None:
    response = await client.post("/v1/apps", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert_error_shape(response)
    assert response.json()["detail"][0]["loc"][0] == "body"


async def test_chunked_body_over_the_limit_is_413(client: httpx.AsyncClient, database: Database) -> None:
    before = await snapshot(database)

    async def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"name": "big", "metadata": {"blob": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}}'

    response = await client.post("/v1/apps", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert await snapshot(database) == before


async def test_the_dialectic_rejects_unusable_queries_before_any_model(
    client: httpx.AsyncClient, world: World
) -> None:
    # The configured model (the local default here) is built on the first chat that gets that far.
    for queries, loc in (([], ["body", "queries"]), (["ok", ""], ["body", "queries", 1])):
        chat = await client.post(S.format(w=world) + "/chat", json={"queries": queries})
        assert chat.status_code == 422 and chat.json()["detail"][0]["loc"] == loc
