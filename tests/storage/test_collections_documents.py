"""Collections (unique per user, reserved name) and their documents."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from storage import collections, documents, users
from storage.db import Database
from storage.errors import ConflictError, InvalidError, NotFoundError
from storage.tables import Collection, Document
from tests.storage.factories import make_tree


async def _count(database: Database, model: type) -> int:
    async with database.transaction() as db:
        return (await db.execute(select(func.count()).select_from(model))).scalar_one()


async def test_collection_crud_and_unique_per_user(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        c = await collections.create_collection(db, t.app_id, t.user_id, "notes", {"k": "v"})
        other_user = await users.create_user(db, t.app_id, "second")
        same_name_elsewhere = await collections.create_collection(db, t.app_id, other_user.id, "notes")
        renamed = await collections.update_collection(db, t.app_id, t.user_id, c.id, name="journal")
        by_name = await collections.get_collection_by_name(db, t.app_id, t.user_id, "journal")
        listed = await collections.list_collections(db, t.app_id, t.user_id)
    assert same_name_elsewhere.id != c.id
    assert (renamed.name, renamed.metadata_) == ("journal", {"k": "v"})
    assert by_name.id == c.id and [x.id for x in listed.items] == [c.id]

    with pytest.raises(ConflictError):
        async with database.transaction() as db:
            await collections.create_collection(db, t.app_id, t.user_id, "journal")
    with pytest.raises(InvalidError):
        async with database.transaction() as db:
            await collections.update_collection(db, t.app_id, t.user_id, c.id)
    assert await _count(database, Collection) == 2


@pytest.mark.parametrize("name", ["honcho", "Honcho", "HONCHO", "observer:abc", "Observer:x"])
async def test_reserved_name_cannot_be_taken_by_clients(database: Database, name: str) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        c = await collections.create_collection(db, t.app_id, t.user_id, "mine")
    with pytest.raises(InvalidError, match="reserved"):
        async with database.transaction() as db:
            await collections.create_collection(db, t.app_id, t.user_id, name)
    with pytest.raises(InvalidError, match="reserved"):
        async with database.transaction() as db:
            await collections.update_collection(db, t.app_id, t.user_id, c.id, name=name)
    async with database.transaction() as db:
        assert (await collections.get_collection(db, t.app_id, t.user_id, c.id)).name == "mine"


async def test_reserved_collection_cannot_be_renamed_or_deleted(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        facts = await collections.create_collection(db, t.app_id, t.user_id, "honcho", allow_reserved=True)
        doc = await documents.create_document(db, t.app_id, t.user_id, facts.id, content="likes tea")
    for call in (
        lambda db: collections.update_collection(db, t.app_id, t.user_id, facts.id, name="mine"),
        lambda db: collections.delete_collection(db, t.app_id, t.user_id, facts.id),
        lambda db: documents.delete_document(db, t.app_id, t.user_id, facts.id, doc.id),
    ):
        with pytest.raises(InvalidError):
            async with database.transaction() as db:
                await call(db)
    assert await _count(database, Document) == 1


async def test_documents_crud_and_cascade(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        c = await collections.create_collection(db, t.app_id, t.user_id, "notes")
        d1 = await documents.create_document(db, t.app_id, t.user_id, c.id, content="one", metadata={"n": 1})
        d2 = await documents.create_document(db, t.app_id, t.user_id, c.id, content="two")
        updated = await documents.update_document(db, t.app_id, t.user_id, c.id, d1.id, content="uno")
        listed = await documents.list_documents(db, t.app_id, t.user_id, c.id, reverse=True)
        filtered = await documents.list_documents(db, t.app_id, t.user_id, c.id, filter={"n": 1})
    assert (updated.content, updated.metadata_) == ("uno", {"n": 1})
    assert [d.id for d in listed.items] == [d2.id, d1.id]
    assert [d.id for d in filtered.items] == [d1.id]

    async with database.transaction() as db:
        await documents.delete_document(db, t.app_id, t.user_id, c.id, d2.id)
    with pytest.raises(NotFoundError):
        async with database.transaction() as db:
            await documents.get_document(db, t.app_id, t.user_id, c.id, d2.id)

    async with database.transaction() as db:
        await collections.delete_collection(db, t.app_id, t.user_id, c.id)
    assert await _count(database, Collection) == 0
    assert await _count(database, Document) == 0, "deleting a collection deletes its documents"


async def test_exact_repeats_are_found_by_normalised_content_through_their_index(database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        c = await collections.create_collection(db, t.app_id, t.user_id, "notes")
        other = await collections.create_collection(db, t.app_id, t.user_id, "elsewhere")
        kept = await documents.create_document(
            db, t.app_id, t.user_id, c.id, content="Ana  LOVES rock-climbing!"
        )
        await documents.create_document(db, t.app_id, t.user_id, c.id, content="Ana loves hiking.")
        await documents.create_document(db, t.app_id, t.user_id, other.id, content="Ana loves rock climbing")
        wanted = [documents.normalized("ana loves rock climbing."), documents.normalized("Ana has a cat")]
        found = await documents.find_normalized(db, c.id, wanted)
        # The planner takes the hashed-content index (not a scan of the collection's documents).
        await db.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0]
            for row in await db.execute(
                text(
                    f"EXPLAIN SELECT id FROM documents WHERE collection_id = :c AND {documents.NORMALIZED_AMONG}"
                ),
                {"c": c.id, "texts": wanted},
            )
        )
    assert {key: row.id for key, row in found.items()} == {"ana loves rock climbing": kept.id}
    assert "ix_documents_collection_id_normalized" in plan, plan


async def test_bad_document_input(database: Database) -> None:
    t = await make_tree(database)
    other = await make_tree(database, "a2", "u2")
    async with database.transaction() as db:
        c = await collections.create_collection(db, t.app_id, t.user_id, "notes")
    for error, call in (
        (InvalidError, lambda db: documents.create_document(db, t.app_id, t.user_id, c.id, content="")),
        (
            InvalidError,
            lambda db: documents.create_document(db, t.app_id, t.user_id, c.id, content="x" * 100_001),
        ),
        (
            InvalidError,
            lambda db: documents.create_document(db, t.app_id, t.user_id, c.id, content="x", metadata=[]),
        ),
        (
            NotFoundError,
            lambda db: documents.create_document(db, other.app_id, other.user_id, c.id, content="x"),
        ),
        (NotFoundError, lambda db: documents.list_documents(db, t.app_id, other.user_id, c.id)),
    ):
        with pytest.raises(error):
            async with database.transaction() as db:
                await call(db)
    assert await _count(database, Document) == 0
