"""Erasure is physical: once a user is erased, their text is in no file of the LanceDB index, not only
absent from query results (LanceDB deletes are soft; compaction keeps rows of fragments with few
deletions; old versions keep old files; index files keep the tokens of deleted rows)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pytest
from lance.file import LanceFileReader

from cluster.index_sync import index_sync_worker
from cluster.stack import Stack, open_stack
from models.embedding import TextEmbedder
from pipelines.indexing import PurgeOptions, message_text
from rapport.settings import Settings, VectorStoreSettings
from storage import apps, collections, messages, sessions, users
from storage.db import Database
from storage.index import DOCUMENTS, MESSAGES, Table, VectorIndex
from tests.storage.factories import make_tree

# The purge's grace for readers of old versions is not what these tests are about: none here.
PURGE_NOW = {"erasure_purge_grace_s": 0}
SECRET = "Xylophagous7Quokkabrine"  # unique: no other row holds these bytes, nor its tokens


@pytest.fixture
async def erasing(database: Database, embedder: TextEmbedder, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = Settings.model_validate({"vector_store": {"uri": str(tmp_path / "lancedb"), **PURGE_NOW}})
    async with open_stack(settings, database=database, embedder=embedder) as stack:
        yield stack


def files_holding(root: str, needle: bytes) -> list[str]:
    """Every file under ``root`` whose raw bytes contain ``needle``."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                if needle in file.read():
                    found.append(os.path.relpath(path, root))
    return found


def fts_tokens(table_uri: str) -> int:
    """Distinct tokens in the full-text index's files (its posting lists; the token set itself is an FST,
    which holds no word as contiguous bytes, so grepping cannot see it)."""
    dataset = lance.dataset(table_uri)
    (fts,) = [d for d in dataset.describe_indices() if d.field_names == ["text"]]
    count = 0
    for segment in fts.segments:
        folder = Path(table_uri) / "_indices" / segment.uuid
        for part in folder.glob("*invert.lance"):
            count += LanceFileReader(str(part)).read_all().to_table().num_rows
    return count


async def fresh_fts_tokens(index: VectorIndex, where: Path) -> int:
    """What a full-text index built from scratch over the rows the table holds now has."""
    rows: pa.Table = await index._tables[MESSAGES].to_arrow()
    fresh = await VectorIndex.open(str(where), index.dimension)
    await fresh.upsert(MESSAGES, rows.to_pylist())
    await fresh.maintain()
    return fts_tokens(str(where / "messages.lance"))


async def run_sync_rounds(stack: Stack) -> None:
    """What the index sync's worker runs in two rounds, with its upkeep due before each: the first
    applies what waits in the outbox, the second's upkeep folds it into the indexes."""
    worker = index_sync_worker(stack.sync, VectorStoreSettings(maintain_interval_s=1e-6))
    for _ in range(2):
        await worker.run_once()


async def others_messages(stack: Stack, app_id: str, n_users: int, per_user: int) -> None:
    async with stack.database.transaction() as db:
        for u in range(n_users):
            user = await users.create_user(db, app_id, f"other-{u}")
            session = await sessions.create_session(db, app_id, user.id)
            items = [{"content": f"ordinary chatter number {i}", "is_user": True} for i in range(per_user)]
            await messages.create_messages(db, app_id, user.id, session.id, items)


async def assert_gone(stack: Stack, user_id: str, message_id: str, vector: np.ndarray) -> None:
    index = stack.index
    # Not the user's id: a delete's predicate names it in the table's transaction file, which stays with
    # the latest version (an opaque id, no text of theirs).
    needles = (SECRET.encode(), SECRET.lower().encode(), vector.tobytes(), message_id.encode())
    for needle in needles:
        assert files_holding(index.uri, needle) == [], f"{needle[:40]!r} is still on disk"
    assert await index.count(MESSAGES, {"user_id": user_id}) == 0
    nearest = await index.nearest(MESSAGES, vector, scope={}, limit=1)
    assert [hit.id for hit in nearest] != [message_id]


async def test_erased_text_leaves_a_fragment_it_shared_with_many_rows(
    erasing: Stack, database: Database, tmp_path: Path
) -> None:
    stack, index = erasing, erasing.index
    t = await make_tree(database)
    await others_messages(stack, t.app_id, n_users=4, per_user=50)
    [planted] = await stack.memory.add_messages(
        t.app_id, t.user_id, t.session_id, [{"content": f"my secret is {SECRET}", "is_user": True}]
    )
    await run_sync_rounds(stack)  # all 201 rows written at once, then indexed
    table_uri = str(Path(index.uri) / "messages.lance")
    assert len(lance.dataset(table_uri).get_fragments()) == 1
    vector = (await stack.embedder.embed([message_text(planted)]))[0]
    assert files_holding(index.uri, SECRET.encode()), "the test sees the text where it is"
    assert files_holding(index.uri, vector.tobytes()), "and the vector"
    hits = await index.matching(MESSAGES, SECRET, scope={"user_id": t.user_id}, limit=5)
    assert [h.id for h in hits] == [planted.id], "the full-text index holds it"
    with_secret = fts_tokens(table_uri)

    await stack.memory.erase_user(t.app_id, t.user_id)  # 1 row of 201 in its fragment
    await run_sync_rounds(stack)

    await assert_gone(stack, t.user_id, planted.id, vector)
    assert await index.count(MESSAGES) == 200, "everyone else's rows stay"
    assert fts_tokens(table_uri) == await fresh_fts_tokens(index, tmp_path / "fresh") < with_secret, (
        "the full-text index holds no token of the erased row"
    )


async def test_erased_text_leaves_the_indexes_of_a_fragment_erased_whole(
    erasing: Stack, database: Database, tmp_path: Path
) -> None:
    """A user's rows alone in a fragment (written in a round of their own): the delete drops the
    fragment, which compaction never sees, while the index segment upkeep built over it and the others
    keeps its tokens and ids."""
    stack, index = erasing, erasing.index
    t = await make_tree(database)
    await others_messages(stack, t.app_id, n_users=4, per_user=50)
    await run_sync_rounds(stack)
    contents = [f"{SECRET} said thing {i}" for i in range(3)]
    planted = await stack.memory.add_messages(
        t.app_id, t.user_id, t.session_id, [{"content": c, "is_user": True} for c in contents]
    )
    await run_sync_rounds(stack)
    table_uri = str(Path(index.uri) / "messages.lance")
    dataset = lance.dataset(table_uri)
    assert len(dataset.get_fragments()) == 2, "the user's rows have a fragment of their own"
    (fts,) = [d for d in dataset.describe_indices() if d.field_names == ["text"]]
    assert [sorted(s.fragment_ids) for s in fts.segments] == [
        [f.fragment_id for f in dataset.get_fragments()]
    ]
    with_secret = fts_tokens(table_uri)
    vector = (await stack.embedder.embed([message_text(planted[0])]))[0]

    erased = await stack.memory.erase_user(t.app_id, t.user_id)
    assert erased.messages == 3
    await run_sync_rounds(stack)

    await assert_gone(stack, t.user_id, planted[0].id, vector)
    assert fts_tokens(table_uri) == await fresh_fts_tokens(index, tmp_path / "fresh") < with_secret


async def test_an_app_erasure_is_purged_too(erasing: Stack, database: Database) -> None:
    stack, index = erasing, erasing.index
    kept = await make_tree(database, app_name="kept")
    await others_messages(stack, kept.app_id, n_users=2, per_user=50)
    async with database.transaction() as db:
        app = await apps.create_app(db, "gone")
        user = await users.create_user(db, app.id, "someone")
        session = await sessions.create_session(db, app.id, user.id)
    [planted] = await stack.memory.add_messages(
        app.id, user.id, session.id, [{"content": f"note {SECRET}", "is_user": False}]
    )
    await run_sync_rounds(stack)
    vector = (await stack.embedder.embed([message_text(planted)]))[0]
    assert files_holding(index.uri, SECRET.encode())

    await stack.memory.erase_app(app.id)
    await run_sync_rounds(stack)

    await assert_gone(stack, user.id, planted.id, vector)
    assert await index.count(MESSAGES) == 100


class Clock:
    """The purge's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_purges_coalesce_to_one_per_table_per_interval_after_a_grace(
    database: Database, embedder: TextEmbedder, tmp_path: Path
) -> None:
    clock = Clock()
    settings = Settings.model_validate({"vector_store": {"uri": str(tmp_path / "lancedb")}})
    async with open_stack(settings, database=database, embedder=embedder) as stack:
        stack.sync.purge_options = PurgeOptions(every_s=300, grace_s=10, clock=clock)
        compactions: list[dict[str, Any]] = []
        purge_deleted = stack.index.purge_deleted

        async def counted(table: Table) -> dict[str, Any]:
            compactions.append(done := await purge_deleted(table))
            return done

        stack.index.purge_deleted = counted  # type: ignore[method-assign]
        t = await make_tree(database)
        await others_messages(stack, t.app_id, n_users=2, per_user=50)
        async with database.transaction() as db:
            bo = await users.create_user(db, t.app_id, "bo")
            bo_session = await sessions.create_session(db, t.app_id, bo.id)
        await stack.memory.add_messages(
            t.app_id, t.user_id, t.session_id, [{"content": f"ana says {SECRET}", "is_user": True}]
        )
        await stack.memory.add_messages(
            t.app_id, bo.id, bo_session.id, [{"content": "bo says Zanzibarquill9", "is_user": True}]
        )
        await run_sync_rounds(stack)
        messages_purge = stack.sync.purges[MESSAGES]
        assert messages_purge.pending, "a purge is due at start: a restart may have cut one short"
        clock.now += 10
        await run_sync_rounds(stack)
        assert not messages_purge.pending and messages_purge.purged_at is not None
        assert not [c for c in compactions if c["fragments_rewritten"]], "nothing was deleted yet"

        await stack.memory.erase_user(t.app_id, t.user_id)
        assert messages_purge.pending and messages_purge.erased_since is not None
        await run_sync_rounds(stack)  # compacted now; the old version's files wait out the grace
        assert [c["fragments_rewritten"] for c in compactions if c["fragments_rewritten"]] == [1]
        assert files_holding(stack.index.uri, SECRET.encode()), "kept for readers of the old version"
        assert messages_purge.pending
        clock.now += 10
        await run_sync_rounds(stack)
        assert files_holding(stack.index.uri, SECRET.encode()) == []
        assert not messages_purge.pending

        await stack.memory.erase_user(t.app_id, bo.id)  # a second erasure within the interval waits
        clock.now += 100
        await run_sync_rounds(stack)
        assert files_holding(stack.index.uri, b"Zanzibarquill9") and messages_purge.pending
        assert not stack.sync.purge_due()
        clock.now += 190  # 300 s after the last purge's compaction
        assert stack.sync.purge_due()
        await run_sync_rounds(stack)
        clock.now += 10
        await run_sync_rounds(stack)
        assert files_holding(stack.index.uri, b"Zanzibarquill9") == []
        assert len([c for c in compactions if c["fragments_rewritten"]]) == 2
        status = stack.sync.purge_status()[MESSAGES]
        assert status["pending"] is False and status["erased_since"] is None and status["purged_at"]


async def test_a_purge_cut_short_by_a_restart_happens_at_the_next_start(
    database: Database, embedder: TextEmbedder, tmp_path: Path
) -> None:
    settings = Settings.model_validate({"vector_store": {"uri": str(tmp_path / "lancedb"), **PURGE_NOW}})
    async with open_stack(settings, database=database, embedder=embedder) as before:
        t = await make_tree(database)
        await others_messages(before, t.app_id, n_users=2, per_user=50)
        await before.memory.add_messages(
            t.app_id, t.user_id, t.session_id, [{"content": f"ana says {SECRET}", "is_user": True}]
        )
        await run_sync_rounds(before)
        await before.memory.erase_user(t.app_id, t.user_id)  # applied; the process stops before a round
    assert files_holding(str(tmp_path / "lancedb"), SECRET.encode())

    async with open_stack(settings, database=database, embedder=embedder) as after:
        assert after.sync.purge_due()
        await run_sync_rounds(after)
        assert files_holding(after.index.uri, SECRET.encode()) == []
        assert await after.index.count(MESSAGES) == 100


async def test_document_erasures_are_purged_and_routine_deletes_wait_for_compaction(
    erasing: Stack, database: Database
) -> None:
    stack = erasing
    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "facts")).id
    kept = await stack.memory.add_document(t.app_id, t.user_id, cid, content="kept fact", metadata={})
    dropped = await stack.memory.add_document(t.app_id, t.user_id, cid, content="old fact", metadata={})
    await run_sync_rounds(stack)  # the start-up purge is done
    documents_purge = stack.sync.purges[DOCUMENTS]
    assert not documents_purge.pending

    await stack.memory.delete_document(t.app_id, t.user_id, cid, dropped.id)
    assert not documents_purge.pending, "one document replaced or deleted is routine"
    await stack.memory.erase_user(t.app_id, t.user_id)
    assert documents_purge.pending
    await run_sync_rounds(stack)
    assert not documents_purge.pending
    for document in (kept, dropped):
        assert files_holding(stack.index.uri, document.id.encode()) == []


async def test_a_read_that_lost_its_versions_files_to_a_purge_reads_the_latest(
    vector_index: VectorIndex,
) -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("lance error: Not found: messages.lance/data/0101.lance, local.rs:273:40")
        return "rows"

    assert await vector_index._read(read) == "rows" and calls == 2

    async def wrong() -> str:
        raise RuntimeError("lance error: Invalid user input: no such column")

    with pytest.raises(RuntimeError, match="no such column"):
        await vector_index._read(wrong)


async def test_purge_now_purges_without_a_background_sync(
    database: Database, embedder: TextEmbedder, tmp_path: Path
) -> None:
    """The CLI erases with the service stopped: no worker will purge after it, so it purges itself."""
    settings = Settings.model_validate(
        {"vector_store": {"uri": str(tmp_path / "lancedb"), "erasure_purge_grace_s": 0.01}}
    )
    async with open_stack(settings, database=database, embedder=embedder) as stack:
        t = await make_tree(database)
        await others_messages(stack, t.app_id, n_users=1, per_user=50)
        await stack.memory.add_messages(
            t.app_id, t.user_id, t.session_id, [{"content": f"ana says {SECRET}", "is_user": True}]
        )
        await run_sync_rounds(stack)
        await stack.memory.erase_user(t.app_id, t.user_id)
        report = await stack.sync.purge_now()
        assert report is not None and report[MESSAGES]["compacted"]["fragments_rewritten"] == 1
        assert files_holding(stack.index.uri, SECRET.encode()) == []
        assert not any(purge.pending for purge in stack.sync.purges.values())


def rows_in_index_files(table_uri: str) -> dict[str, int]:
    """Rows each index's files hold: the HNSW index's vectors, the scalar indexes' values."""
    held: dict[str, int] = {}
    for index in lance.dataset(table_uri).describe_indices():
        for segment in index.segments:
            folder = Path(table_uri) / "_indices" / segment.uuid
            for part in [*folder.glob("auxiliary.idx"), *folder.glob("page_data.lance")]:
                rows = LanceFileReader(str(part)).read_all().to_table().num_rows
                held[index.name] = held.get(index.name, 0) + rows
    return held


async def test_the_ann_and_scalar_indexes_are_remapped_without_the_erased_rows(
    database: Database, embedder: TextEmbedder, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {"vector_store": {"uri": str(tmp_path / "lancedb"), "ann_min_rows": 150, **PURGE_NOW}}
    )
    async with open_stack(settings, database=database, embedder=embedder) as stack:
        stack.index.id_index_min_rows = 150
        t = await make_tree(database)
        await others_messages(stack, t.app_id, n_users=4, per_user=50)
        [planted] = await stack.memory.add_messages(
            t.app_id, t.user_id, t.session_id, [{"content": f"my secret is {SECRET}", "is_user": True}]
        )
        await run_sync_rounds(stack)
        table_uri = str(Path(stack.index.uri) / "messages.lance")
        assert rows_in_index_files(table_uri) == {"vector_idx": 201, "user_id_idx": 201, "id_idx": 201}

        await stack.memory.erase_user(t.app_id, t.user_id)
        await run_sync_rounds(stack)

        assert rows_in_index_files(table_uri) == {"vector_idx": 200, "user_id_idx": 200, "id_idx": 200}
        vector = (await stack.embedder.embed([message_text(planted)]))[0]
        await assert_gone(stack, t.user_id, planted.id, vector)
        assert stack.sync.purge_status()[MESSAGES]["ann_keeps_erased_vectors"] is False
