"""End to end, offline: `rapport serve` on its defaults (the packaged Qwen2.5-Coder-1.5B on llama.cpp,
the packaged MiniLM embedder), messages posted with the official clients, what was derived read back
with them: v1's ``honcho-ai==0.2.0`` here, v3's ``honcho-ai`` 2.x in its own venv
(tests/sdk/honcho_v3_memory.py)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from honcho import Honcho

from tests.api.test_sdk_v3 import SDK_PYTHON
from tests.db import scratch_database
from tests.served import REPO, rapport_serve

pytestmark = pytest.mark.slow

TURNS = [
    ("I just moved to Lisbon for a new job at a bakery.", True),
    ("That's exciting! How is it going so far?", False),
    ("Good, but I miss my sister Rosa. She is a nurse in Porto.", True),
    ("Do you get to see her often?", False),
    ("Every other weekend. Also, I'm allergic to cats, sadly.", True),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("served-deriver")
    with (
        scratch_database("rapport_served_deriver") as url,
        rapport_serve({"DB_CONNECTION_URI": url, "DERIVER_BATCH_WAIT_S": "1"}, home) as base_url,
    ):
        yield base_url


def test_posted_messages_become_facts_in_the_honcho_collection(served: str) -> None:
    client = Honcho(base_url=served, max_retries=0, timeout=60)
    app = client.apps.get_or_create(name="deriver-e2e")
    user = client.apps.users.get_or_create(app_id=app.id, name="ana")
    ids = {"app_id": app.id, "user_id": user.id}
    session = client.apps.users.sessions.create(**ids)
    posted = [
        client.apps.users.sessions.messages.create(
            **ids, session_id=session.id, content=text, is_user=is_user
        )
        for text, is_user in TURNS
    ]

    deadline = time.monotonic() + 300
    while True:
        status = httpx.get(f"{served}/v1/apps/{app.id}/deriver/status", timeout=10).json()
        if status["done"] == len(TURNS) or time.monotonic() > deadline:
            break
        assert status["parked"] == 0, status
        time.sleep(2)
    assert status["done"] == len(TURNS), status

    collection = client.apps.users.collections.get_by_name(**ids, name="honcho")
    facts = list(client.apps.users.collections.documents.list(**ids, collection_id=collection.id))
    assert facts, "the default local model derived facts from these messages"
    users_messages = {m.id for m in posted if m.is_user}
    for fact in facts:
        assert fact.metadata["session_id"] == session.id
        assert fact.metadata["kind"] in ("fact", "inference")
        assert set(fact.metadata["message_ids"]) <= users_messages, "sources are the user's own messages"
        assert fact.metadata["model"].startswith("local/")
    text = " ".join(f.content.lower() for f in facts)
    assert "lisbon" in text or "rosa" in text or "cat" in text, text
    found = client.apps.users.collections.documents.query(
        **ids, collection_id=collection.id, query="where does ana live?"
    )
    assert found, "derived facts are searchable at once"


def test_the_dialectic_answers_through_the_client_streamed_and_not(served: str) -> None:
    """The official client's chat, with a string and with a list, streamed and not, answered by the
    default local model (after the test above, the user has facts to answer from)."""
    client = Honcho(base_url=served, max_retries=0, timeout=300)
    app = client.apps.get_or_create(name="deriver-e2e")
    user = client.apps.users.get_or_create(app_id=app.id, name="ana")
    ids = {"app_id": app.id, "user_id": user.id}
    session = client.apps.users.sessions.create(**ids)

    answer = client.apps.users.sessions.chat(session.id, **ids, queries="Where does ana live?")
    assert isinstance(answer.content, str) and answer.content.strip(), answer

    several = client.apps.users.sessions.chat(
        session.id, **ids, queries=["Who is Rosa?", "Is ana allergic to anything?"]
    )
    assert several.content.strip(), several

    streamed = client.apps.users.sessions.chat(session.id, **ids, queries="Where does ana work?", stream=True)
    body = streamed if isinstance(streamed, str) else getattr(streamed, "content", streamed)
    assert isinstance(body, str) and body.strip(), f"the streamed body came back: {streamed!r}"

    with client.apps.users.sessions.with_streaming_response.chat(
        session.id, **ids, queries=["What does ana miss?", "Where is Porto?"], stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk for chunk in response.iter_text() if chunk]
    assert chunks and "".join(chunks).strip()
    assert not "".join(chunks).lstrip().startswith("data:"), "raw text chunks, as Honcho v1.1.0 sent them"


def test_the_v3_sdk_gets_back_what_a_two_peer_session_planted(served: str) -> None:
    """honcho-ai 2.x: representation, conclusion query, peer chat (whole and streamed) and session
    context with a peer target, all from what the default local model derived."""
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: `make install` (scripts/install) makes it"
    scenario = REPO / "tests" / "sdk" / "honcho_v3_memory.py"
    run = subprocess.run(
        [str(SDK_PYTHON), str(scenario)],
        env={**os.environ, "RAPPORT_URL": served},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 7, run.stdout
    print(run.stdout)  # what came back, for the log (pytest -s)
