"""The official Honcho client, unmodified, drives Rapport over HTTP through Ray Serve (`rapport serve`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import honcho
import httpx
import pytest
from honcho import Honcho

from tests.db import scratch_database
from tests.served import free_port, rapport_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """Where the Ray that `rapport serve` starts exports its metrics (serve.metrics_port)."""
    return free_port()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Honcho]:
    home: Path = tmp_path_factory.mktemp("served")
    env = {
        # The deriver has its own end-to-end test (test_served_deriver.py); here it would only compete for CPU.
        "DERIVER_ENABLED": "false",
        "SERVE_METRICS_PORT": str(metrics_port),
    }
    with (
        scratch_database("rapport_served") as url,
        rapport_serve({"DB_CONNECTION_URI": url, **env}, home) as base_url,
    ):
        yield Honcho(base_url=base_url, max_retries=0, timeout=30)


def test_apps_and_users(client: Honcho) -> None:
    app = client.apps.create(name="scenario", metadata={"env": "test"})
    assert client.apps.get(app_id=app.id).name == "scenario"
    assert client.apps.get_by_name(name="scenario").id == app.id
    assert client.apps.get_or_create(name="scenario").id == app.id
    other = client.apps.get_or_create(name="scenario-2")
    assert other.id != app.id
    updated = client.apps.update(app_id=app.id, metadata={"env": "prod"})
    assert updated.metadata == {"env": "prod"}
    assert [a.id for a in client.apps.list(filter={"env": "prod"}).items] == [app.id]

    names = [f"user-{i}" for i in range(5)]
    for i, name in enumerate(names):
        client.apps.users.create(app_id=app.id, name=name, metadata={"even": i % 2 == 0})
    first = client.apps.users.list(app_id=app.id, size=2)
    assert (first.total, first.pages, [u.name for u in first.items]) == (5, 3, names[:2])
    third = client.apps.users.list(app_id=app.id, size=2, page=3)
    assert [u.name for u in third.items] == names[4:]
    backwards = client.apps.users.list(app_id=app.id, reverse=True, size=5)
    assert [u.name for u in backwards.items] == names[::-1]
    evens = client.apps.users.list(app_id=app.id, filter={"even": True})
    assert [u.name for u in evens.items] == ["user-0", "user-2", "user-4"]

    user = client.apps.users.get_by_name(app_id=app.id, name="user-1")
    assert client.apps.users.get(app_id=app.id, user_id=user.id).name == "user-1"
    assert client.apps.users.get_or_create(app_id=app.id, name="user-1").id == user.id
    renamed = client.apps.users.update(app_id=app.id, user_id=user.id, name="renamed", metadata={"x": 1})
    assert (renamed.name, renamed.metadata) == ("renamed", {"x": 1})

    with pytest.raises(honcho.ConflictError):
        client.apps.users.create(app_id=app.id, name="user-0")
    with pytest.raises(honcho.NotFoundError):
        client.apps.users.get(app_id=other.id, user_id=user.id)


def test_sessions_messages_and_metamessages(client: Honcho) -> None:
    app = client.apps.get_or_create(name="chat-app")
    user = client.apps.users.get_or_create(app_id=app.id, name="alice")
    ids = {"app_id": app.id, "user_id": user.id}

    session = client.apps.users.sessions.create(**ids, metadata={"topic": "travel"})
    assert client.apps.users.sessions.get(**ids, session_id=session.id).is_active is True
    sessions = client.apps.users.sessions
    s = {**ids, "session_id": session.id}

    one = sessions.messages.create(**s, content="I love Lisbon", is_user=True, metadata={"turn": 0})
    batch = sessions.messages.batch(
        **s,
        messages=[
            {"content": f"turn {i}", "is_user": i % 2 == 0, "metadata": {"turn": i}} for i in range(1, 6)
        ],
    )
    assert [m.content for m in batch] == [f"turn {i}" for i in range(1, 6)]
    listed = sessions.messages.list(**s, size=10)
    assert [m.id for m in listed.items] == [one.id, *(m.id for m in batch)]
    assert [m.content for m in sessions.messages.list(**s, reverse=True, size=2).items] == [
        "turn 5",
        "turn 4",
    ]
    assert [m.id for m in sessions.messages.list(**s, filter={"turn": 3}).items] == [batch[2].id]
    assert sessions.messages.get(**s, message_id=one.id).content == "I love Lisbon"
    assert sessions.messages.update(**s, message_id=one.id, metadata={"flag": True}).metadata == {
        "flag": True
    }

    meta = client.apps.users.metamessages
    thought = meta.create(
        **ids,
        metamessage_type="thought",
        content="likes travel",
        session_id=session.id,
        message_id=batch[1].id,
    )
    assert (thought.metamessage_type, thought.message_id) == ("thought", batch[1].id)
    meta.create(**ids, metamessage_type="profile", content="user-level note")
    assert meta.get(**ids, metamessage_id=thought.id).content == "likes travel"
    assert [m.id for m in meta.list(**ids, session_id=session.id).items] == [thought.id]
    assert [m.metamessage_type for m in meta.list(**ids, metamessage_type="profile").items] == ["profile"]
    assert meta.list(**ids).total == 2
    moved = meta.update(**ids, metamessage_id=thought.id, metamessage_type="insight", metadata={"v": 2})
    assert (moved.metamessage_type, moved.metadata) == ("insight", {"v": 2})

    clone = sessions.clone(**s, message_id=batch[1].id, deep_copy=True)
    cloned = sessions.messages.list(**ids, session_id=clone.id)
    assert [m.content for m in cloned.items] == ["I love Lisbon", "turn 1", "turn 2"]
    assert meta.list(**ids, session_id=clone.id).items[0].message_id == cloned.items[2].id
    full_clone = sessions.clone(**s)
    assert full_clone.id != clone.id
    assert sessions.messages.list(**ids, session_id=full_clone.id).total == 6

    assert sessions.update(**s, metadata={"topic": "food"}).metadata == {"topic": "food"}
    sessions.delete(**s)
    assert sessions.get(**s).is_active is False
    assert [x.id for x in sessions.list(**ids, is_active=True).items] == [clone.id, full_clone.id]
    assert sessions.list(**ids).total == 3


def test_message_search_through_serve(client: Honcho) -> None:
    """The search extension, through the Embedder and IndexWriter deployments."""
    app = client.apps.get_or_create(name="search-app")
    user = client.apps.users.get_or_create(app_id=app.id, name="carol")
    ids = {"app_id": app.id, "user_id": user.id}
    session = client.apps.users.sessions.create(**ids)
    turns = [
        "I adopted a greyhound called Pixel",
        "Nice! How old is Pixel?",
        "Three, and she loves the beach",
    ]
    created = client.apps.users.sessions.messages.batch(
        **ids,
        session_id=session.id,
        messages=[{"content": t, "is_user": i != 1} for i, t in enumerate(turns)],
    )
    http = httpx.Client(base_url=str(client.base_url), timeout=30)
    deadline = time.monotonic() + 60
    while http.get("/health").json()["index"]["pending"]:
        assert time.monotonic() < deadline, "the index sync did not catch up"
        time.sleep(0.2)
    hits = http.post(
        f"/v1/apps/{app.id}/users/{user.id}/search", json={"query": "dog adoption", "top_k": 3}
    ).json()
    assert hits[0]["message"]["id"] == created[0].id
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]


def test_collections_and_documents(client: Honcho) -> None:
    app = client.apps.get_or_create(name="docs-app")
    user = client.apps.users.get_or_create(app_id=app.id, name="bob")
    ids = {"app_id": app.id, "user_id": user.id}
    collections = client.apps.users.collections

    notes = collections.create(**ids, name="notes", metadata={"kind": "free"})
    assert collections.get(**ids, collection_id=notes.id).name == "notes"
    assert collections.get_by_name(**ids, name="notes").id == notes.id
    renamed = collections.update(**ids, collection_id=notes.id, name="journal")
    assert renamed.name == "journal"
    assert [c.id for c in collections.list(**ids).items] == [notes.id]
    with pytest.raises(honcho.UnprocessableEntityError):
        collections.create(**ids, name="honcho")

    c = {**ids, "collection_id": notes.id}
    docs = collections.documents
    d1 = docs.create(**c, content="Bob drinks green tea", metadata={"topic": "food"})
    d2 = docs.create(**c, content="Bob runs marathons", metadata={"topic": "sport"})
    assert docs.get(**c, document_id=d1.id).content == "Bob drinks green tea"
    assert [d.id for d in docs.list(**c).items] == [d1.id, d2.id]
    assert [d.id for d in docs.list(**c, reverse=True).items] == [d2.id, d1.id]
    assert [d.id for d in docs.list(**c, filter={"topic": "sport"}).items] == [d2.id]
    assert docs.update(**c, document_id=d2.id, content="Bob runs ultramarathons").content.endswith(
        "ultramarathons"
    )
    found = docs.query(**c, query="what does Bob drink?", top_k=2)
    assert [d.id for d in found][0] == d1.id and len(found) == 2
    assert [d.id for d in docs.query(**c, query="what does Bob drink?", filter={"topic": "sport"})] == [d2.id]
    docs.delete(**c, document_id=d1.id)
    with pytest.raises(honcho.NotFoundError):
        docs.get(**c, document_id=d1.id)

    collections.delete(**c)
    with pytest.raises(honcho.NotFoundError):
        collections.get(**c)


def test_metrics_are_exported_through_rays_agent(client: Honcho, metrics_port: int) -> None:
    """Under Serve the metrics go through ray.util.metrics to Ray's metrics agent, prefixed ray_."""
    from prometheus_client.parser import text_string_to_metric_families

    app = client.apps.create(name="metered")
    client.apps.users.create(app_id=app.id, name="ana")
    assert httpx.get(str(client.base_url).rstrip("/") + "/metrics", timeout=10).status_code == 404, (
        "the API points at the agent"
    )

    wanted = {
        "ray_rapport_http_requests_total",
        "ray_rapport_index_lag_entries",
        "ray_rapport_embedding_batch_size_count",
    }
    deadline = time.monotonic() + 90  # the agent reports every few seconds; the gauges are set every 10 s
    while True:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        created = [
            s.value for s in samples
            if s.name == "ray_rapport_http_requests_total"
            and (s.labels.get("method"), s.labels.get("route"), s.labels.get("status"))
            == ("POST", "/v1/apps/{app_id}/users", "200")
        ]  # fmt: skip
        if created and wanted <= {s.name for s in samples}:
            break
        assert time.monotonic() < deadline, f"not exported: {wanted - {s.name for s in samples}}, {created}"
        time.sleep(2)
    assert sum(created) >= 1
