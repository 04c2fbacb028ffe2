"""The deriver through the `openai` provider against a server that honours ``response_format`` as vLLM
and Ray Serve LLM do (guided decoding: the answer always fits the schema asked for), over real
PostgreSQL and LanceDB: what it sends, and that the facts are stored."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from cluster.deriver import derivation_workers
from models.llm.openai_compatible import OpenAICompatibleLLM
from pipelines.deriver import Deriver, DeriverOptions
from pipelines.deriver.prompts import facts_limit
from pipelines.memory import Memory
from rapport.settings import DeriverSettings
from storage import messages
from storage.db import Database
from tests.models.fake_llm_servers import FakeServer, Reply, openai_error, openai_reply, serve_fake
from tests.pipelines.test_deriver import facts_of
from tests.storage.factories import make_tree

LINE = re.compile(r"^\[(\d+)\] ana: (.*)$", re.M)


def guided(body: dict[str, Any]) -> Reply:
    """A fact per numbered message of ana's, cut to the schema's limit and checked against it; plain
    text when no schema is asked for (summaries)."""
    fmt = body.get("response_format")
    if fmt is None:
        return openai_reply("ana talked about her week.")
    if fmt.get("type") != "json_schema" or "schema" not in fmt.get("json_schema", {}):
        return openai_error(400, f"unsupported response_format {fmt!r}")
    schema = fmt["json_schema"]["schema"]
    said = LINE.findall(body["messages"][-1]["content"])
    facts = [{"fact": f"ana said: {text}", "sources": [int(n)]} for n, text in said]
    answer = {"facts": facts[: schema["properties"]["facts"]["maxItems"]]}
    jsonschema.validate(answer, schema)  # guided decoding never leaves the schema
    return openai_reply(json.dumps(answer), prompt_tokens=900, completion_tokens=80)


@pytest.fixture(scope="module")
def vllm_like() -> Iterator[FakeServer]:
    with serve_fake("/v1/chat/completions") as server:
        server.responder = guided
        yield server


async def test_the_deriver_asks_for_its_schema_and_stores_what_comes_back(
    vllm_like: FakeServer, database: Database, memory: Memory
) -> None:
    tree = await make_tree(database, user_name="ana")
    said = [
        "I moved to Lisbon",
        "Nice",
        "I work at a bakery",
        "Cool",
        "My cat is called Miso",
        "Aw",
        "I run on Sundays",
    ]
    async with database.transaction() as db:
        await messages.create_messages(
            db,
            tree.app_id,
            tree.user_id,
            tree.session_id,
            [{"content": t, "is_user": i % 2 == 0, "metadata": {}} for i, t in enumerate(said)],
        )
    settings = DeriverSettings(batch_wait_s=0, poll_interval_s=0.01)
    llm = OpenAICompatibleLLM(f"{vllm_like.url}/v1", "rapport-llm")
    worker = derivation_workers(Deriver(memory, llm, options=DeriverOptions.of(settings)), settings)[0]
    assert await worker.run_once() == "done"

    (request,) = vllm_like.requests
    assert request["model"] == "rapport-llm"
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["facts"]["maxItems"] == facts_limit(4)  # four of the messages are ana's
    stored = [f.content for f in await facts_of(database, tree)]
    assert stored == [
        "ana said: I moved to Lisbon",
        "ana said: I work at a bakery",
        "ana said: My cat is called Miso",
        "ana said: I run on Sundays",
    ]
