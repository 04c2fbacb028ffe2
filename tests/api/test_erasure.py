"""Erasing a user or an app (DELETE, a Rapport extension): nothing of theirs is left in any PostgreSQL
table or LanceDB table, checked directly; a crash between the database and the index is finished by the
index sync; everyone else's data is untouched; scoped keys cannot erase outside their scope."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from cluster.index_sync import drain
from deployments.api.auth import mint_key
from pipelines.memory import Memory
from storage import derivation, jobs, ratelimits
from storage.db import Database
from storage.index import DOCUMENTS, MESSAGES
from storage.scopes import Scope
from storage.tables import Base
from tests.api.conftest import SECRET


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = await client.post(path, json=body, **kw)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def populate(client: httpx.AsyncClient, app: str, name: str, **kw: Any) -> dict[str, str]:
    """A user with a session of messages, a metamessage, a collection with documents, facts in the
    reserved collection's place (an ordinary one here), and a batch job naming them."""
    user = (await post(client, f"/v1/apps/{app}/users", {"name": name}, **kw))["id"]
    base = f"/v1/apps/{app}/users/{user}"
    session = (await post(client, f"{base}/sessions", {}, **kw))["id"]
    said = await post(
        client,
        f"{base}/sessions/{session}/messages/batch",
        {
            "messages": [
                {"content": f"{name} says {w}", "is_user": True, "metadata": {}} for w in ("hi", "yo")
            ]
        },
        **kw,
    )
    await post(
        client,
        f"{base}/metamessages",
        {"session_id": session, "message_id": said[0]["id"], "label": "note", "content": f"{name} note"},
        **kw,
    )
    collection = (await post(client, f"{base}/collections", {"name": "notes"}, **kw))["id"]
    await post(client, f"{base}/collections/{collection}/documents", {"content": f"{name} likes tea"}, **kw)
    return {"user": user, "session": session, "collection": collection}


OWNER = {"user_id": "users", "app_id": "apps"}


async def ids_of(database: Database, column: str, value: str) -> list[str]:
    """The ids of every row that belongs to the owner (``column`` = ``value``), and the owner's."""
    found = [value]
    async with database.transaction() as db:
        for table in Base.metadata.sorted_tables:
            if column in table.c and "id" in table.c:
                found += [
                    r[0]
                    for r in await db.execute(
                        text(f"SELECT id FROM {table.name} WHERE {column} = :v"), {"v": value}
                    )
                ]
    return found


async def leftovers(database: Database, column: str, value: str, ids: Sequence[str]) -> dict[str, int]:
    """Rows left in any table that name the owner or any of its rows' ``ids`` (in any id-bearing column,
    and in the index outbox's targets and scopes), by table."""
    found: dict[str, int] = {}
    async with database.transaction() as db:
        for table in Base.metadata.sorted_tables:
            where = [
                f"CAST({name} AS text) = ANY(:ids)"
                for name in ("id", "user_id", "app_id", "session_id", "target_id")
                if name in table.c
            ]
            if column in table.c:
                where.append(f"{column} = :v")
            if table.name == "index_outbox":
                where.append("scope ->> :c = :v")
            if not where:
                continue  # a table that names no owner or row (worker_status)
            query = f"SELECT count(*) FROM {table.name} WHERE {' OR '.join(where)}"
            n = (await db.execute(text(query), {"v": value, "c": column, "ids": list(ids)})).scalar_one()
            if n:
                found[table.name] = n
    return found


async def indexed(memory: Memory, column: str, value: str) -> int:
    return await memory.index.count(MESSAGES, {column: value}) + await memory.index.count(
        DOCUMENTS, {column: value}
    )


async def settle(memory: Memory) -> None:
    while await drain(memory.writer):
        pass


async def test_erasing_a_user_leaves_nothing_of_theirs_and_nothing_else_missing(
    client: httpx.AsyncClient, memory: Memory, database: Database
) -> None:
    app = (await post(client, "/v1/apps", {"name": "a"}))["id"]
    ana, bob = await populate(client, app, "ana"), await populate(client, app, "bob")
    async with database.transaction() as db:
        job = await jobs.create_job(db, app, mode="replace", selection={}, settings={}, model="m")
        await jobs.add_all_users(db, job, app, since=None)
    await settle(memory)
    assert await indexed(memory, "user_id", ana["user"]) == 3  # two messages, one document
    ana_ids, bob_ids = (
        await ids_of(database, "user_id", ana["user"]),
        await ids_of(database, "user_id", bob["user"]),
    )
    bob_before = await leftovers(database, "user_id", bob["user"], bob_ids)
    assert bob_before["derivation_job_users"] == 1 and bob_before["messages"] == 2

    erased = await client.delete(f"/v1/apps/{app}/users/{ana['user']}")
    assert erased.status_code == 200, erased.text
    assert erased.json() == {"messages": 2, "documents": 1}

    assert await leftovers(database, "user_id", ana["user"], ana_ids) == {}
    assert await indexed(memory, "user_id", ana["user"]) == 0, "the index follows in the same call"
    assert await leftovers(database, "user_id", bob["user"], bob_ids) == bob_before
    assert await indexed(memory, "user_id", bob["user"]) == 3
    assert (await client.delete(f"/v1/apps/{app}/users/{ana['user']}")).status_code == 404


async def test_erasing_an_app_takes_its_users_and_jobs(
    client: httpx.AsyncClient, memory: Memory, database: Database
) -> None:
    gone, kept = [(await post(client, "/v1/apps", {"name": n}))["id"] for n in ("gone", "kept")]
    await populate(client, gone, "ana")
    await populate(client, kept, "ana")
    async with database.transaction() as db:
        await jobs.create_job(db, gone, mode="append", selection={}, settings={}, model="m")
        for app in (gone, kept):  # each app's request budget and its turn at the derivation queue
            assert await ratelimits.take(db, app, rate=1, burst=5, want=1) is not None
            assert await derivation.claim(db, lease_s=60, wait_s=0, max_tokens=1000) is not None
    await settle(memory)
    gone_ids, kept_ids = await ids_of(database, "app_id", gone), await ids_of(database, "app_id", kept)
    kept_before = await leftovers(database, "app_id", kept, kept_ids)
    assert kept_before["rate_buckets"] == 1 and kept_before["derivation_apps"] == 1

    erased = await client.delete(f"/v1/apps/{gone}")
    assert erased.status_code == 200 and erased.json() == {"messages": 2, "documents": 1}
    assert await leftovers(database, "app_id", gone, gone_ids) == {}
    assert await indexed(memory, "app_id", gone) == 0
    assert await leftovers(database, "app_id", kept, kept_ids) == kept_before
    assert await indexed(memory, "app_id", kept) == 3


async def test_a_crash_before_the_index_is_cleaned_is_finished_by_the_index_sync(
    client: httpx.AsyncClient, memory: Memory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = (await post(client, "/v1/apps", {"name": "a"}))["id"]
    ana = await populate(client, app, "ana")
    await settle(memory)
    ana_ids = await ids_of(database, "user_id", ana["user"])

    async def crash(entries: Sequence[int]) -> None:
        raise ConnectionError("the process died here")

    monkeypatch.setattr(memory.writer, "apply", crash)
    assert (await client.delete(f"/v1/apps/{app}/users/{ana['user']}")).status_code == 200
    monkeypatch.undo()
    assert await leftovers(database, "user_id", ana["user"], ana_ids) == {"index_outbox": 2}, (
        "the deletions wait"
    )
    assert await indexed(memory, "user_id", ana["user"]) == 3

    await settle(memory)  # the index sync after a restart
    assert await leftovers(database, "user_id", ana["user"], ana_ids) == {}
    assert await indexed(memory, "user_id", ana["user"]) == 0


async def test_scoped_keys_cannot_erase_outside_their_scope(
    api_client: Callable[..., httpx.AsyncClient],
) -> None:
    admin = {"Authorization": f"Bearer {mint_key(SECRET)}"}
    async with api_client(auth={"use_auth": True, "jwt_secret": SECRET}) as client:
        app, other = [(await post(client, "/v1/apps", {"name": n}, headers=admin))["id"] for n in ("a", "b")]
        ana = await populate(client, app, "ana", headers=admin)
        bob = await populate(client, app, "bob", headers=admin)

        def key(**scope: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {mint_key(SECRET, Scope(**scope))}"}

        refused = [
            (f"/v1/apps/{app}/users/{ana['user']}", key(app_id=app, user_id=ana["user"])),  # her own key
            (f"/v1/apps/{app}/users/{ana['user']}", key(app_id=app, user_id=bob["user"])),
            (f"/v1/apps/{app}/users/{ana['user']}", key(app_id=other)),
            (
                f"/v1/apps/{app}/users/{ana['user']}",
                key(app_id=app, user_id=ana["user"], session_id=ana["session"]),
            ),
            (f"/v1/apps/{app}", key(app_id=app)),  # an app key cannot erase its app
            (f"/v1/apps/{app}/users/{ana['user']}", {}),
        ]
        for path, headers in refused:
            assert (await client.delete(path, headers=headers)).status_code == 401, (path, headers)
        assert (
            await client.delete(f"/v1/apps/{app}/users/{ana['user']}", headers=key(app_id=app))
        ).status_code == 200
        assert (await client.delete(f"/v1/apps/{app}", headers=admin)).status_code == 200
        assert (await client.get(f"/v1/apps?app_id={other}", headers=admin)).status_code == 200
