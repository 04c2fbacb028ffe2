"""Documents and messages through the write and search paths: real Postgres and LanceDB (and the real
model where what ranks first is asserted)."""

from __future__ import annotations

from sqlalchemy import text

from cluster.index_sync import drain
from pipelines.memory import Memory
from storage import apps, collections, sessions, users
from storage.db import Database
from storage.index import DOCUMENTS, MESSAGES
from tests.storage.factories import Tree, make_tree

FACTS = [
    "Alice drinks green tea every morning",
    "Alice runs marathons and trains on weekends",
    "Alice's daughter is learning the violin",
    "Alice works as a structural engineer in Lisbon",
]


async def _collection(database: Database, t: Tree, name: str = "facts") -> str:
    async with database.transaction() as db:
        return (await collections.create_collection(db, t.app_id, t.user_id, name)).id


async def _outbox(database: Database) -> int:
    async with database.transaction() as db:
        return (await db.execute(text("SELECT count(*) FROM index_outbox"))).scalar_one()


async def test_documents_are_queryable_as_soon_as_they_are_written(
    real_memory: Memory, database: Database
) -> None:
    memory = real_memory  # what ranks first needs the real model
    t = await make_tree(database)
    cid = await _collection(database, t)
    created = [
        await memory.add_document(t.app_id, t.user_id, cid, content=fact, metadata={"n": i})
        for i, fact in enumerate(FACTS)
    ]
    assert await _outbox(database) == 0, "inline writes retire their outbox entries"

    scope = {"app_id": t.app_id, "user_id": t.user_id, "collection_id": cid}
    best = await memory.query_documents(**scope, query="what does she drink?", top_k=2)
    assert best[0].id == created[0].id and len(best) == 2
    music = await memory.query_documents(**scope, query="musical instrument lessons", top_k=1)
    assert music[0].id == created[2].id
    only_3 = await memory.query_documents(**scope, query="what does she drink?", top_k=2, filter={"n": 3})
    assert [d.id for d in only_3] == [created[3].id], "the metadata filter narrows before ranking"

    await memory.update_document(
        t.app_id,
        t.user_id,
        cid,
        created[3].id,
        content="Alice plays the cello in an orchestra",
        metadata=None,
    )
    music = await memory.query_documents(**scope, query="musical instrument lessons", top_k=2)
    assert {d.id for d in music} == {created[2].id, created[3].id}, "updated content is re-embedded"

    await memory.delete_document(t.app_id, t.user_id, cid, created[0].id)
    assert created[0].id not in [d.id for d in await memory.query_documents(**scope, query="tea", top_k=5)]
    await memory.delete_collection(t.app_id, t.user_id, cid)
    assert await memory.index.count(DOCUMENTS) == 0


async def test_queries_stay_inside_their_collection(memory: Memory, database: Database) -> None:
    t = await make_tree(database)
    mine, other = await _collection(database, t, "mine"), await _collection(database, t, "other")
    await memory.add_document(t.app_id, t.user_id, other, content="green tea", metadata={})
    kept = await memory.add_document(t.app_id, t.user_id, mine, content="black coffee", metadata={})
    found = await memory.query_documents(
        app_id=t.app_id, user_id=t.user_id, collection_id=mine, query="green tea", top_k=5
    )
    assert [d.id for d in found] == [kept.id]


async def test_messages_are_indexed_by_the_sync_and_then_searchable(
    memory: Memory, database: Database
) -> None:
    t = await make_tree(database)
    turns = [
        {"content": "I adopted a rescue dog named Biscuit", "is_user": True, "metadata": {"speaker": "Ana"}},
        {"content": "What breed is Biscuit?", "is_user": False, "metadata": {"speaker": "Bot"}},
        {"content": "A beagle mix, he loves long walks", "is_user": True, "metadata": {"speaker": "Ana"}},
        {
            "content": "I started learning Portuguese",
            "is_user": True,
            "metadata": {"speaker": "Ana", "lang": "en"},
        },
    ]
    added = await memory.add_messages(t.app_id, t.user_id, t.session_id, turns)
    assert await _outbox(database) == 4, "messages wait in the outbox: the index may lag"
    assert (
        await memory.search_messages(app_id=t.app_id, user_id=t.user_id, query="dog", mode="fulltext") == []
    )

    assert await drain(memory.writer) == 4
    assert await _outbox(database) == 0
    assert await memory.index.count(MESSAGES) == 4

    for mode in ("semantic", "fulltext", "hybrid"):
        hits = await memory.search_messages(
            app_id=t.app_id, user_id=t.user_id, query="which language is she learning?", mode=mode, top_k=2
        )
        assert hits[0][0].id == added[3].id, mode
        assert hits[0][1] >= hits[-1][1], "best first"
    filtered = await memory.search_messages(
        app_id=t.app_id, user_id=t.user_id, query="dog", mode="hybrid", filter={"lang": "en"}
    )
    assert [m.id for m, _ in filtered] == [added[3].id]


async def test_search_stays_inside_its_user_and_session(memory: Memory, database: Database) -> None:
    t = await make_tree(database)
    other = await make_tree(database, "app2", "user2")
    async with database.transaction() as db:
        second = await sessions.create_session(db, t.app_id, t.user_id)
        stranger = await users.create_user(db, t.app_id, "stranger")
        stranger_session = await sessions.create_session(db, t.app_id, stranger.id)
    mine = await memory.add_message(
        t.app_id, t.user_id, t.session_id, content="my cat sleeps", is_user=True, metadata={}
    )
    later = await memory.add_message(
        t.app_id, t.user_id, second.id, content="my cat eats", is_user=True, metadata={}
    )
    await memory.add_message(
        t.app_id, stranger.id, stranger_session.id, content="a cat", is_user=True, metadata={}
    )
    await memory.add_message(
        other.app_id, other.user_id, other.session_id, content="cat", is_user=True, metadata={}
    )
    await drain(memory.writer)

    everywhere = await memory.search_messages(app_id=t.app_id, user_id=t.user_id, query="cat")
    assert {m.id for m, _ in everywhere} == {mine.id, later.id}
    one_session = await memory.search_messages(
        app_id=t.app_id, user_id=t.user_id, session_id=second.id, query="cat"
    )
    assert [m.id for m, _ in one_session] == [later.id]


async def test_clone_and_metadata_updates_reindex(memory: Memory, database: Database) -> None:
    t = await make_tree(database)
    m = await memory.add_message(
        t.app_id, t.user_id, t.session_id, content="hello", is_user=True, metadata={}
    )
    clone = await memory.clone_session(t.app_id, t.user_id, t.session_id, message_id=None, deep_copy=False)
    await memory.update_message(t.app_id, t.user_id, t.session_id, m.id, {"speaker": "Zelda"})
    await drain(memory.writer)
    assert await memory.index.count(MESSAGES, {"session_id": clone.id}) == 1
    hits = await memory.search_messages(
        app_id=t.app_id, user_id=t.user_id, session_id=t.session_id, query="Zelda", mode="fulltext"
    )
    assert [x.id for x, _ in hits] == [m.id], "the speaker from metadata is part of the indexed text"


async def test_unknown_scopes_are_not_found(memory: Memory, database: Database) -> None:
    import pytest

    from storage.errors import NotFoundError

    t = await make_tree(database)
    async with database.transaction() as db:
        other = await apps.create_app(db, "elsewhere")
    with pytest.raises(NotFoundError):
        await memory.search_messages(app_id=other.id, user_id=t.user_id, query="x")
    with pytest.raises(NotFoundError):
        await memory.query_documents(app_id=t.app_id, user_id=t.user_id, collection_id="nope", query="x")
