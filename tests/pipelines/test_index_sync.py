"""Consistency between PostgreSQL and the index: repair after failures, rebuild from scratch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import text

from cluster.index_sync import drain
from models.embedding import SentenceTransformerEmbedder
from pipelines.indexing import IndexSync, message_text
from pipelines.memory import Memory
from storage import collections, documents, outbox
from storage.db import Database
from storage.index import DOCUMENTS, MESSAGES, IndexDimensionMismatch, VectorIndex
from storage.query import Record
from tests.storage.factories import make_tree


class CrashBeforeIndexWrite(IndexSync):
    """A writer that dies after PostgreSQL committed and before LanceDB was written."""

    async def write_documents(
        self, rows: Sequence[Record], vectors: np.ndarray, outbox_ids: Sequence[int]
    ) -> None:
        raise ConnectionError("simulated crash between the commit and the index write")


async def _make_due(database: Database) -> None:
    """Skip the grace period the outbox gives inline writes (as if it had passed)."""
    async with database.transaction() as db:
        await db.execute(text("UPDATE index_outbox SET available_at = now()"))


async def test_a_failed_index_write_is_repaired_from_the_outbox(
    database: Database, embedder: SentenceTransformerEmbedder, vector_index: VectorIndex
) -> None:
    crashing = Memory(
        database, embedder, vector_index, CrashBeforeIndexWrite(database, vector_index, embedder)
    )
    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "facts")).id
    scope = {"app_id": t.app_id, "user_id": t.user_id, "collection_id": cid}

    document = await crashing.add_document(t.app_id, t.user_id, cid, content="Bo keeps bees", metadata={})
    assert await crashing.query_documents(**scope, query="bees", top_k=1) == [], (
        "the index write never happened"
    )

    sync = IndexSync(database, vector_index, embedder)
    assert await drain(sync) == 0, "the entry waits out the inline grace period first"
    await _make_due(database)
    assert await drain(sync) == 1
    found = await crashing.query_documents(**scope, query="bees", top_k=1)
    assert [d.id for d in found] == [document.id]


async def test_failing_entries_are_retried_then_parked_without_blocking_others(
    database: Database, embedder: SentenceTransformerEmbedder, vector_index: VectorIndex
) -> None:
    class PickyEmbedder:
        dimension = embedder.dimension

        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            if any("poison" in t for t in texts):
                raise ValueError("cannot embed this")
            return await embedder.embed(texts)

    memory = Memory(database, embedder, vector_index, IndexSync(database, vector_index, embedder))
    sync = IndexSync(database, vector_index, PickyEmbedder(), max_attempts=2)  # type: ignore[arg-type]
    t = await make_tree(database)
    items = [{"content": c, "is_user": True} for c in ("fine one", "poison pill", "fine two")]
    await memory.add_messages(t.app_id, t.user_id, t.session_id, items)

    assert await drain(sync) == 3
    assert await vector_index.count(MESSAGES) == 2, "the good entries went through"
    lag = await memory.index_lag()
    assert (lag.pending, lag.parked) == (1, 0), "the bad one waits for a retry"

    await _make_due(database)
    await drain(sync)
    lag = await memory.index_lag()
    assert (lag.pending, lag.parked) == (0, 1), "after max_attempts it is parked, and reported"
    async with database.transaction() as db:
        (error, count), *others = await outbox.parked_reasons(db)  # what `rapport index status` prints
    assert "cannot embed this" in error and count == 1 and not others
    async with database.transaction() as db:
        parked = (await db.execute(text("SELECT id FROM index_outbox"))).scalars().all()
        assert await outbox.waiting(db, [*parked, 10**9]) == 1, (
            "the parked entry waits; an applied one is gone"
        )


async def test_reindex_from_an_empty_index_gives_the_same_results(memory: Memory, database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "facts")).id
    for fact in ("likes jazz", "has two cats", "studies marine biology", "hates mornings", "cooks ramen"):
        await memory.add_document(t.app_id, t.user_id, cid, content=f"Ren {fact}", metadata={})
    await memory.add_messages(
        t.app_id,
        t.user_id,
        t.session_id,
        [{"content": f"turn about {w}", "is_user": True} for w in ("fish", "music", "food")],
    )
    await drain(memory.writer)

    async def results() -> tuple[list, list]:
        docs = await memory.query_documents(
            app_id=t.app_id, user_id=t.user_id, collection_id=cid, query="pets", top_k=5
        )
        hits = await memory.search_messages(app_id=t.app_id, user_id=t.user_id, query="music", top_k=3)
        return [d.id for d in docs], [(m.id, round(s, 4)) for m, s in hits]

    before = await results()
    await memory.index.truncate()
    assert await memory.index.count(DOCUMENTS) == await memory.index.count(MESSAGES) == 0
    assert (await results())[0] == []

    counts = await memory.writer.reindex()  # type: ignore[attr-defined]
    assert counts == {DOCUMENTS: 5, MESSAGES: 3}
    assert await results() == before


def test_message_text_names_speaker_and_date() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    row = SimpleNamespace(
        content="hi",
        is_user=True,
        metadata_={"speaker": "Caroline", "date": "8 May 2023"},
        created_at=datetime.now(UTC),
    )
    assert message_text(row) == "Caroline (8 May 2023): hi"  # type: ignore[arg-type]
    bare = SimpleNamespace(
        content="yo",
        is_user=False,
        metadata_={"speaker": {"no": "dicts"}},
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert message_text(bare) == "assistant (2026-01-02): yo"  # type: ignore[arg-type]


async def test_reindex_of_one_app_leaves_the_others(memory: Memory, database: Database) -> None:
    a = await make_tree(database, "a", "u")
    b = await make_tree(database, "b", "u")
    for tree in (a, b):
        await memory.add_message(
            tree.app_id, tree.user_id, tree.session_id, content="hello", is_user=True, metadata={}
        )
    await drain(memory.writer)
    counts = await memory.writer.reindex(app_id=a.app_id)  # type: ignore[attr-defined]
    assert counts[MESSAGES] == 1
    assert await memory.index.count(MESSAGES) == 2


async def test_an_index_built_by_another_model_is_refused_until_recreated(tmp_path: Path) -> None:
    uri = str(tmp_path / "lance")
    old = await VectorIndex.open(uri, 8)
    await old.upsert(MESSAGES, [{"id": "m", "app_id": "a", "user_id": "u", "session_id": "s", "text": "t",
                                 "vector": np.ones(8, dtype=np.float32), "created_at": datetime.now(UTC)}])  # fmt: skip
    with pytest.raises(IndexDimensionMismatch, match="reindex --recreate"):
        await VectorIndex.open(uri, 16)
    fresh = await VectorIndex.open(uri, 16, recreate=True)
    assert fresh.dimension == 16 and await fresh.count(MESSAGES) == 0


async def test_an_outage_retries_later_without_spending_attempts(
    database: Database, embedder: SentenceTransformerEmbedder, vector_index: VectorIndex
) -> None:
    class DownEmbedder:
        dimension = embedder.dimension

        async def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise ConnectionError("embedder unreachable")

    memory = Memory(database, embedder, vector_index, IndexSync(database, vector_index, embedder))
    t = await make_tree(database)
    await memory.add_messages(
        t.app_id, t.user_id, t.session_id, [{"content": f"m{i}", "is_user": True} for i in range(5)]
    )
    down = IndexSync(database, vector_index, DownEmbedder(), max_attempts=1)  # type: ignore[arg-type]
    assert await drain(down) == 5
    async with database.transaction() as db:
        rows = (
            await db.execute(text("SELECT attempts, parked, available_at > now() FROM index_outbox"))
        ).all()
    assert rows == [(0, False, True)] * 5, "released for later, attempts untouched, nothing parked"

    await _make_due(database)
    assert await drain(memory.writer) == 5  # back up: all applied
    assert await vector_index.count(MESSAGES) == 5


async def test_a_claimed_entry_comes_back_if_its_worker_dies(database: Database, memory: Memory) -> None:
    from storage import outbox

    t = await make_tree(database)
    await memory.add_message(t.app_id, t.user_id, t.session_id, content="hi", is_user=True, metadata={})
    async with database.transaction() as db:
        assert len(await outbox.claim(db, 10, lease_s=300)) == 1  # ... and the worker dies here
    assert await drain(memory.writer) == 0, "leased to the dead worker"
    await _make_due(database)  # the lease runs out
    assert await drain(memory.writer) == 1


async def test_writes_that_lose_a_race_are_corrected(memory: Memory, database: Database) -> None:
    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "c")).id
    doc = await memory.add_document(t.app_id, t.user_id, cid, content="first version", metadata={})
    stale = SimpleNamespace(**{**doc._mapping, "content": "an older version"})  # computed before an update
    vector = await memory.embedder.embed(["an older version"])
    await memory.writer.write_documents([stale], vector, [])  # type: ignore[list-item]
    async with database.transaction() as db:
        queued = (await db.execute(text("SELECT kind, target_id FROM index_outbox"))).all()
    assert queued == [("document", doc.id)], "the stale write is queued to be redone from PostgreSQL"

    await memory.delete_document(t.app_id, t.user_id, cid, doc.id)
    await memory.writer.write_documents([doc], vector, [])  # a write that lands after the delete
    assert await memory.index.count(DOCUMENTS) == 0, "a row deleted meanwhile leaves the index again"


async def test_parked_entries_can_be_retried(database: Database, memory: Memory) -> None:
    from storage import outbox

    t = await make_tree(database)
    await memory.add_message(t.app_id, t.user_id, t.session_id, content="hi", is_user=True, metadata={})
    async with database.transaction() as db:
        await db.execute(text("UPDATE index_outbox SET parked = true, attempts = 10"))
        assert await outbox.unpark(db) == 1
    assert (await memory.index_lag()).parked == 0
    assert await drain(memory.writer) == 1


async def test_concurrent_document_writes_share_index_writes_and_all_land(
    memory: Memory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents stored by concurrent callers (derivation workers, API requests) are indexed in fewer
    writes: what arrives while one write is under way goes in the next. Each caller's outbox entries
    are retired only with its rows indexed, and a failed write leaves its entries for the sync."""
    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "c")).id
    stored = []
    async with database.transaction() as db:
        for i in range(10):
            row = await documents.create_document(
                db, t.app_id, t.user_id, cid, content=f"fact {i}", metadata={}
            )
            entries = await outbox.enqueue_upserts(db, "document", [row.id])
            stored.append((row, entries))
    vectors = await memory.embedder.embed([f"fact {i}" for i in range(10)])

    upserts: list[int] = []
    upsert = memory.index.upsert

    async def counted(table: str, rows: Sequence[dict]) -> None:
        upserts.append(len(rows))
        await asyncio.sleep(0.02)  # a write under way while the others arrive
        await upsert(table, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(memory.index, "upsert", counted)
    await asyncio.gather(
        *(
            memory.writer.write_documents([row], vectors[i : i + 1], ids)
            for i, (row, ids) in enumerate(stored)
        )
    )
    assert sum(upserts) == 10 and len(upserts) < 10, upserts
    assert await memory.index.count(DOCUMENTS, {"collection_id": cid}) == 10
    async with database.transaction() as db:
        assert (await db.execute(text("SELECT count(*) FROM index_outbox"))).scalar_one() == 0

    async def broken(table: str, rows: Sequence[dict]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(memory.index, "upsert", broken)
    async with database.transaction() as db:
        row = await documents.create_document(db, t.app_id, t.user_id, cid, content="fact 10", metadata={})
        entries = await outbox.enqueue_upserts(db, "document", [row.id])
    with pytest.raises(OSError, match="disk full"):
        await memory.writer.write_documents([row], vectors[:1], entries)
    async with database.transaction() as db:
        assert (await db.execute(text("SELECT count(*) FROM index_outbox"))).scalar_one() == 1


async def test_the_index_is_compacted_when_every_write_was_inline(memory: Memory, database: Database) -> None:
    """Inline writes retire their own outbox entries, so the sync worker finds nothing to claim; each
    still adds a fragment to the index, which slows every search until upkeep folds them together."""
    from cluster.index_sync import OutboxSource

    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "c")).id
    for i in range(6):
        await memory.add_document(t.app_id, t.user_id, cid, content=f"fact number {i}", metadata={})
    table = memory.index._tables[DOCUMENTS]
    assert (await table.stats())["fragment_stats"]["num_fragments"] >= 6

    source = OutboxSource(memory.writer, maintain_every_s=0.0)  # type: ignore[arg-type]
    assert await source.claim() is None, "nothing left for the sync: every write was inline"
    assert (await table.stats())["fragment_stats"]["num_fragments"] == 1
    assert await memory.index.count(DOCUMENTS, {"collection_id": cid}) == 6


async def test_many_writes_bring_upkeep_before_its_interval(memory: Memory, database: Database) -> None:
    """A busy writer adds fragments faster than a minute's upkeep folds them: after enough writes to a
    table (COMPACT_AFTER_WRITES_MIN while it is small) upkeep comes at the next round, not on the clock."""
    from cluster.index_sync import OutboxSource
    from pipelines.indexing import COMPACT_AFTER_WRITES_MIN

    t = await make_tree(database)
    async with database.transaction() as db:
        cid = (await collections.create_collection(db, t.app_id, t.user_id, "c")).id
    source = OutboxSource(memory.writer, maintain_every_s=3600.0)  # type: ignore[arg-type]
    table = memory.index._tables[DOCUMENTS]

    async def fragments() -> int:
        return int((await table.stats())["fragment_stats"]["num_fragments"])

    for i in range(COMPACT_AFTER_WRITES_MIN - 1):
        await memory.add_document(t.app_id, t.user_id, cid, content=f"fact number {i}", metadata={})
    await source.claim()
    assert await fragments() >= COMPACT_AFTER_WRITES_MIN - 1, "too few writes yet: upkeep waits its hour"
    await memory.add_document(t.app_id, t.user_id, cid, content="one fact more", metadata={})
    await source.claim()
    assert await fragments() == 1
    assert await memory.index.count(DOCUMENTS, {"collection_id": cid}) == COMPACT_AFTER_WRITES_MIN
    await source.claim()  # nothing written since: nothing to do
    assert await fragments() == 1


async def test_the_sync_purges_erasures_between_rounds_and_retries_a_failed_purge_later(
    memory: Memory, database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Erasures are applied inline, like most writes, so the worker purges before each claim whether or
    not there is anything to claim; a purge that fails leaves the erasure pending for the next interval
    and the worker running."""
    from cluster.index_sync import OutboxSource
    from pipelines.indexing import PurgeOptions

    now = [0.0]
    sync: IndexSync = memory.writer  # type: ignore[assignment]
    sync.purge_options = PurgeOptions(every_s=300, grace_s=0, clock=lambda: now[0])
    source = OutboxSource(sync, maintain_every_s=3600.0)
    t = await make_tree(database)
    await memory.add_message(t.app_id, t.user_id, t.session_id, content="hi", is_user=True, metadata={})
    await drain(sync)  # indexed; the purge due at start is done
    assert not sync.purge_due() and not sync.purges[MESSAGES].pending

    async def broken(table: str) -> dict:
        raise OSError("object store unreachable")

    real_purge = memory.index.purge_deleted
    monkeypatch.setattr(memory.index, "purge_deleted", broken)
    await memory.erase_user(t.app_id, t.user_id)
    assert sync.purge_due()
    assert await source.claim() is None, "nothing to claim: the erasure was applied inline"
    assert "purging erased rows from the messages index failed" in caplog.text
    assert sync.purges[MESSAGES].pending and not sync.purge_due(), "tried again after the interval"

    monkeypatch.setattr(memory.index, "purge_deleted", real_purge)
    now[0] += 300
    await source.claim()
    assert not sync.purges[MESSAGES].pending and sync.purges[MESSAGES].purged_at is not None


async def test_a_write_that_lands_after_an_erasure_and_cannot_be_checked_is_undone_later(
    database: Database, memory: Memory
) -> None:
    """Found by the soak (bench/soak.py): a round reads a user's new messages, the user is erased while
    it embeds them (the erasure's index delete finds nothing yet), the round writes them, and the
    database goes away before the round can check its writes against it. The round's entries come back
    after the outage, and then the rows must leave the index, though PostgreSQL has nothing left to
    write for them."""
    from storage.errors import UnavailableError

    t = await make_tree(database)
    await memory.add_messages(
        t.app_id, t.user_id, t.session_id, [{"content": f"erase me {i}", "is_user": True} for i in range(3)]
    )
    sync = memory.writer
    assert isinstance(sync, IndexSync)
    embed, verify = sync.embedder.embed, sync._verify

    async def embed_while_erased(texts: Sequence[str]) -> np.ndarray:
        vectors = await embed(texts)
        await memory.erase_user(t.app_id, t.user_id)  # commits, and deletes from the index: nothing yet
        return vectors

    async def database_gone(*args: object, **kwargs: object) -> None:
        raise UnavailableError("database", "the server closed the connection")

    sync.embedder.embed = embed_while_erased  # type: ignore[method-assign]
    sync._verify = database_gone  # type: ignore[method-assign]
    try:
        await drain(sync)  # an outage: the entries are given back
    finally:
        sync.embedder.embed, sync._verify = embed, verify  # type: ignore[method-assign]
    assert await memory.index.count(MESSAGES, {"user_id": t.user_id}) == 3, "written after the erasure"

    await _make_due(database)
    while await drain(sync):
        pass
    assert await memory.index.count(MESSAGES, {"user_id": t.user_id}) == 0
    assert sync.purges[MESSAGES].pending, "and taken out of the files at the next purge"
