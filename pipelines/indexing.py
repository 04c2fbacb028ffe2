"""Keeping the LanceDB index in step with PostgreSQL.

Every change that affects the index writes an outbox entry in its own transaction. This module applies
them: documents inline (the request that wrote one waits for its index write, so it is queryable when
the call returns), messages in the background (embedded in batches; the lag shows in /health), and
anything that failed, from a crash or an error, on the next round. `reindex` rebuilds from scratch.

Erased rows are taken out of the index's files too, not only out of its results (`IndexSync.purge`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import numpy as np

from models.embedding import TextEmbedder
from rapport.coalesce import Coalescer, PerLoop
from rapport.settings import VectorStoreSettings
from storage import outbox
from storage.db import Database
from storage.errors import UnavailableError
from storage.index import DOCUMENTS, MESSAGES, Table, VectorIndex
from storage.query import Record, count_rows, fetch_by_ids, rows_after
from storage.tables import Document, Message

log = logging.getLogger(__name__)
T = TypeVar("T")

METADATA_TEXT_MAX = 200  # characters of a speaker or date taken from metadata
# Upkeep comes early once a table has taken this many writes since the last (each adds a fragment that
# every search and write reads) or the square root of a twentieth of its rows, whichever is more.
# Compacting rewrites the table's fragments below LanceDB's million-row target (measured here: 20,000
# rows in 120-160 ms, 200,000 in 1.1-1.8 s), while each fragment adds about 0.3 ms of CPU to a write and a
# search: with n writes between upkeeps the fragments cost about 0.15 n^2 ms and the upkeep about
# 7 us a row, least in sum at n = sqrt(rows / 20).
COMPACT_AFTER_WRITES_MIN = 16


class IndexWriter(Protocol):
    """What the API needs from the index's single writer (in-process, or a Serve deployment)."""

    async def write_documents(
        self, rows: Sequence[Record], vectors: np.ndarray, outbox_ids: Sequence[int]
    ) -> None: ...

    async def apply(self, outbox_ids: Sequence[int]) -> None: ...


def _short(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)[:METADATA_TEXT_MAX]


def message_text(message: Record) -> str:
    """What is indexed for a message: who said it and when, then what was said.

    Speaker and date come from the metadata when the app supplies them (``speaker`` or ``name``;
    ``date`` or ``timestamp``), else from ``is_user`` and ``created_at``. On LoCoMo, prefixing them
    took MiniLM's recall@10 from 0.29 to 0.57 (docs/benchmarks.md).
    """
    metadata = message.metadata_ or {}
    speaker = _short(metadata.get("speaker")) or _short(metadata.get("name"))
    speaker = speaker or ("user" if message.is_user else "assistant")
    when = (
        _short(metadata.get("date"))
        or _short(metadata.get("timestamp"))
        or message.created_at.date().isoformat()
    )
    return f"{speaker} ({when}): {message.content}"


def document_row(document: Record, vector: np.ndarray) -> dict[str, Any]:
    return {
        "id": document.id,
        "app_id": document.app_id,
        "user_id": document.user_id,
        "collection_id": document.collection_id,
        "vector": vector,
        "created_at": document.created_at,
    }


def message_row(message: Record, vector: np.ndarray) -> dict[str, Any]:
    return {
        "id": message.id,
        "app_id": message.app_id,
        "user_id": message.user_id,
        "session_id": message.session_id,
        "text": message_text(message),
        "vector": vector,
        "created_at": message.created_at,
    }


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A stored document as it crosses to the index's writer in another process (a Serve replica, a
    job's writer actor): what writing and checking its index row needs."""

    id: str
    app_id: str
    user_id: str
    collection_id: str
    content: str
    created_at: Any

    @classmethod
    def of(cls, row: Any) -> StoredDocument:
        """From a database row or its mapping."""
        values = row if isinstance(row, dict) else dict(row._mapping)
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def document_text(document: Record) -> str:
    return str(document.content)


@dataclass(frozen=True, slots=True)
class _Indexed:
    """One kind of indexed row: where it lives in each store and how it becomes an index row."""

    kind: outbox.Kind
    model: type[Document] | type[Message]
    table: Table
    to_row: Callable[[Record, np.ndarray], dict[str, Any]]
    text_of: Callable[[Record], str]


INDEXED = (
    _Indexed("document", Document, DOCUMENTS, document_row, document_text),
    _Indexed("message", Message, MESSAGES, message_row, message_text),
)
TABLE_OF_KIND: dict[str, Table] = {spec.kind: spec.table for spec in INDEXED}
INDEXED_BY_KIND = {spec.kind: spec for spec in INDEXED}

CALL_TIMEOUT_S = 120  # an embedding or index call that takes longer counts as failed
WRITES_PER_GROUP = 64  # inline document writes merged into one index write, at most

# An inline document write: the stored rows, their vectors and their outbox entries.
_DocumentWrite = tuple[list[Record], np.ndarray, list[int]]


async def _bounded(call: Awaitable[T]) -> T:
    """Await a call to the embedder or the index, failing it (and so the round) if it hangs."""
    return await asyncio.wait_for(call, timeout=CALL_TIMEOUT_S)


@dataclass
class ErasurePurge:
    """Where one table stands with taking erased rows out of its files (``IndexSync.purge``)."""

    erased_since: datetime | None = None  # the oldest erasure delete applied and not yet purged (UTC)
    purged_at: datetime | None = None  # when this process last finished a purge: old files removed (UTC)
    due_at: float | None = None  # monotonic time of erased_since
    compacted_at: float | None = None  # rows compacted away at this monotonic time; old files remain
    purged_version: int | None = None  # the versions before this one may still hold erased rows
    started_at: float = -math.inf  # monotonic time of the last compaction
    # The ANN index still covers a fragment erased whole (quantised vectors, no text): see purge_deleted.
    ann_keeps_erased_vectors: bool = False

    @property
    def pending(self) -> bool:
        """Whether erased rows may still be in some file of the table."""
        return self.due_at is not None or self.compacted_at is not None


@dataclass(frozen=True, slots=True)
class PurgeOptions:
    """How erased rows are purged from the index files (vector_store.erasure_purge_s and _grace_s)."""

    every_s: float = 300.0  # a table is compacted for erasures at most this often
    grace_s: float = 10.0  # and the files it made obsolete removed this long after
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


class IndexSync:
    """The index's single writer: applies outbox entries, inline or in the background."""

    def __init__(
        self,
        database: Database,
        index: VectorIndex,
        embedder: TextEmbedder,
        *,
        batch_size: int = 256,
        max_attempts: int = 10,
        purge: PurgeOptions | None = None,
    ) -> None:
        self.database = database
        self.index = index
        self.embedder = embedder
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.purge_options = purge or PurgeOptions()
        # A purge is due at start: a process that stopped between an erasure's delete and its purge left
        # no other trace of it, and a purge with nothing to take out costs a manifest read.
        self.purges = {table: ErasurePurge() for table in TABLE_OF_KIND.values()}
        for table in self.purges:
            self._erased(table)
        self._writes_since_upkeep: dict[Table, int] = dict.fromkeys(TABLE_OF_KIND.values(), 0)
        self._rows: dict[Table, int] = dict.fromkeys(TABLE_OF_KIND.values(), 0)  # at the last upkeep
        # Inline document writes that arrive while one is under way go together in the next: one index
        # version, one check and one outbox update for many derivation batches or API requests.
        self._document_writes: PerLoop[_DocumentWrite] = PerLoop(
            lambda: Coalescer(self._write_document_groups, max_items=WRITES_PER_GROUP, max_in_flight=1)
        )

    @classmethod
    def configured(
        cls, database: Database, index: VectorIndex, embedder: TextEmbedder, settings: VectorStoreSettings
    ) -> IndexSync:
        purge = PurgeOptions(every_s=settings.erasure_purge_s, grace_s=settings.erasure_purge_grace_s)
        return cls(
            database,
            index,
            embedder,
            batch_size=settings.sync_batch,
            max_attempts=settings.max_attempts,
            purge=purge,
        )

    # --- inline writes (the API awaits these) ----------------------------------------------------------

    async def write_documents(
        self, rows: Sequence[Record], vectors: np.ndarray, outbox_ids: Sequence[int]
    ) -> None:
        """Write freshly stored documents with the vectors already computed, then retire their entries."""
        if rows or outbox_ids:
            await self._document_writes.run([(list(rows), vectors, list(outbox_ids))])

    async def _write_document_groups(self, writes: list[_DocumentWrite]) -> list[None]:
        rows = [row for each, _, _ in writes for row in each]
        entries = [i for _, _, ids in writes for i in ids]
        if rows:
            vectors = np.concatenate([v for each, v, _ in writes if len(each)])
            await self._upsert(INDEXED_BY_KIND["document"], rows, vectors, retire=entries)
        else:
            async with self.database.transaction() as db:
                await outbox.done(db, entries)
        return [None] * len(writes)

    async def apply(self, outbox_ids: Sequence[int]) -> None:
        """Apply these entries now (deletes, typically) rather than on the next round."""
        async with self.database.transaction() as db:
            entries = await outbox.due(db, len(outbox_ids), ids=outbox_ids)
            await self._apply(entries)
            await outbox.done(db, [e.id for e in entries])

    # --- what a background round does (scheduled by cluster/index_sync.py) -------------------------

    async def apply_isolating_failures(
        self, entries: Sequence[outbox.Entry]
    ) -> tuple[list[outbox.Entry], list[tuple[outbox.Entry, str]]]:
        """Apply a batch; on failure, halve it until the failing entries are found. Returns the entries
        applied and the ones that failed, with their errors.

        Raises ``UnavailableError`` when nothing went through because the embedder or the index itself
        is down: then no entry is to blame, and none should spend an attempt.
        """
        try:
            await self._apply(entries)
            return list(entries), []
        except Exception as exc:
            if not await self.dependencies_answer():
                raise UnavailableError("the embedder or the search index", str(exc)) from exc
            return await self._bisect(entries, f"{type(exc).__name__}: {exc}")

    async def _bisect(
        self, entries: Sequence[outbox.Entry], error: str
    ) -> tuple[list[outbox.Entry], list[tuple[outbox.Entry, str]]]:
        if len(entries) == 1:
            return [], [(entries[0], error)]
        applied: list[outbox.Entry] = []
        failed: list[tuple[outbox.Entry, str]] = []
        for half in (entries[: len(entries) // 2], entries[len(entries) // 2 :]):
            try:
                await self._apply(half)
                applied += half
            except Exception as exc:
                ok, bad = await self._bisect(half, f"{type(exc).__name__}: {exc}")
                applied, failed = applied + ok, failed + bad
        return applied, failed

    async def maintain(self) -> dict[str, Any] | None:
        """Compact and index the tables written since the last time (None if none was)."""
        written = [table for table, n in self._writes_since_upkeep.items() if n]
        if not written:
            return None
        for table in written:
            self._writes_since_upkeep[table] = 0
        report = await self.index.maintain(written)
        for table in written:
            self._rows[table] = int(report.get(table, {}).get("rows", self._rows[table]))
        return report

    def compaction_due(self) -> bool:
        """Whether a table took enough writes since its last upkeep to have it now rather than on the
        next interval (``COMPACT_AFTER_WRITES_MIN``)."""
        return any(
            n >= max(COMPACT_AFTER_WRITES_MIN, math.isqrt(self._rows[table] // 20))
            for table, n in self._writes_since_upkeep.items()
        )

    # --- erasure: rows out of the files -----------------------------------------------------------------

    def _erased(self, table: Table) -> None:
        state = self.purges[table]
        if state.due_at is None:
            state.due_at = self.purge_options.clock()
            state.erased_since = datetime.now(UTC)

    def purge_due(self) -> bool:
        """Whether ``purge`` has a step to take now."""
        now = self.purge_options.clock()
        return any(self._compaction_due(s, now) or self._removal_due(s, now) for s in self.purges.values())

    def _compaction_due(self, state: ErasurePurge, now: float) -> bool:
        return (
            state.due_at is not None
            and state.compacted_at is None
            and now - state.started_at >= self.purge_options.every_s
        )

    def _removal_due(self, state: ErasurePurge, now: float) -> bool:
        return state.compacted_at is not None and now - state.compacted_at >= self.purge_options.grace_s

    def purge_status(self) -> dict[str, dict[str, Any]]:
        """Each table's erasure purge, in plain values (for /health, across a Serve handle)."""
        return {
            table: {
                "pending": state.pending,
                "erased_since": state.erased_since.isoformat() if state.erased_since else None,
                "purged_at": state.purged_at.isoformat() if state.purged_at else None,
                "ann_keeps_erased_vectors": state.ann_keeps_erased_vectors,
            }
            for table, state in self.purges.items()
        }

    async def purge(self) -> dict[str, Any] | None:
        """Take erased rows out of the index's files, for each table that had some deleted: compact
        them away and remap or rebuild its indexes (``VectorIndex.purge_deleted``), then, once the grace
        for reads of older versions has passed, remove those versions' files. A table is compacted at
        most once per ``every_s``: the erasures applied meanwhile wait and go together in the next.

        So an erasure's rows are out of every file within ``every_s`` + ``grace_s`` + the purge's own
        time, at the first round after. Returns what was done (None if nothing was due)."""
        report: dict[str, Any] = {}
        for table, state in self.purges.items():
            try:
                steps = await self._purge_step(table, state)
            except Exception as exc:
                # The rows are out of every result already; the other tables go on, and this one is
                # tried again after its interval.
                log.exception("purging erased rows from the %s index failed", table)
                steps = {"error": f"{type(exc).__name__}: {exc}"}
            if steps:
                report[table] = steps
        return report or None

    async def _purge_step(self, table: Table, state: ErasurePurge) -> dict[str, Any]:
        options, steps = self.purge_options, {}
        if self._compaction_due(state, options.clock()):
            due_at, erased_since, last = state.due_at, state.erased_since, state.started_at
            state.due_at, state.erased_since = None, None  # deletes from now on need another purge
            state.started_at = options.clock()
            try:
                steps["compacted"] = done = await self.index.purge_deleted(table)
            except BaseException:
                state.due_at, state.erased_since = due_at, erased_since
                raise
            state.compacted_at, state.purged_version = options.clock(), done["version"]
            state.ann_keeps_erased_vectors = done["ann_keeps_erased_vectors"]
            if not (done["fragments_rewritten"] or done["indexes_rebuilt"]):
                state.started_at = last  # nothing rewritten (e.g. at start): no cost to space out
        if self._removal_due(state, options.clock()) and state.purged_version is not None:
            steps["removed"] = removed = await self.index.remove_old_versions(
                table, before=state.purged_version
            )
            if not removed["failed_deletes"]:
                state.compacted_at = None
                state.purged_at = datetime.now(UTC)
        return steps

    async def purge_now(self) -> dict[str, Any] | None:
        """Purge every table with erased rows at once, waiting out the grace here: for a process that
        applied an erasure without a background index sync to purge after it (e.g. the CLI)."""
        for state in self.purges.values():
            state.started_at = -math.inf
        report = await self.purge() or {}
        if any(s.compacted_at is not None for s in self.purges.values()):
            await asyncio.sleep(self.purge_options.grace_s)
            for table, steps in (await self.purge() or {}).items():
                report.setdefault(table, {}).update(steps)
        failed = {table: steps["error"] for table, steps in report.items() if "error" in steps}
        if failed or any(s.pending for s in self.purges.values()):
            raise UnavailableError("the search index", f"erased rows are still in its files: {failed}")
        return report or None

    async def dependencies_answer(self) -> bool:
        """Whether the embedder and the index work at all (so a failure is the entries' own)."""
        try:
            await asyncio.wait_for(self.embedder.embed(["probe"]), timeout=30)
            await asyncio.wait_for(self.index.count(MESSAGES), timeout=30)
        except Exception:
            return False
        return True

    async def _apply(self, entries: Sequence[outbox.Entry]) -> None:
        """Upserts first (of rows still in PostgreSQL), then deletes: the order that leaves both agreeing."""
        for spec in INDEXED:
            ids = [
                e.target_id for e in entries if e.kind == spec.kind and e.action == "upsert" and e.target_id
            ]
            if ids:
                async with self.database.transaction() as db:
                    rows = await fetch_by_ids(db, spec.model, ids)
                await self._embed_and_upsert(spec, rows)
                # Rows gone from PostgreSQL (erased) since the entry was written: an earlier attempt may
                # have written them after the erasure's index delete and died before checking its write.
                await self._remove_gone(spec.table, sorted(set(ids) - {row.id for row in rows}))
        for e in entries:
            if e.action == "delete":
                table = TABLE_OF_KIND[e.kind]
                target = [e.target_id] if e.target_id else []
                await _bounded(self.index.delete(table, ids=target, scope=e.scope))
                self._writes_since_upkeep[table] += 1
                # Messages leave PostgreSQL only by an erasure (a user's or an app's), and documents by
                # scope only with a user, an app or a collection; one document deleted by id (a fact
                # replaced by the deriver, say) is routine, holds no text and waits for compaction.
                if table == MESSAGES or e.scope:
                    self._erased(table)

    async def _embed_and_upsert(self, spec: _Indexed, rows: Sequence[Record]) -> None:
        if not rows:
            return
        vectors = await _bounded(self.embedder.embed([spec.text_of(r) for r in rows]))
        await self._upsert(spec, rows, vectors)

    async def _upsert(
        self, spec: _Indexed, rows: Sequence[Record], vectors: np.ndarray, *, retire: Sequence[int] = ()
    ) -> None:
        """Write rows with their vectors, then check them against PostgreSQL (see ``_verify``) and retire
        the outbox entries ``retire`` in the same transaction."""
        await _bounded(
            self.index.upsert(spec.table, [spec.to_row(r, v) for r, v in zip(rows, vectors, strict=True)])
        )
        self._writes_since_upkeep[spec.table] += 1
        await self._verify(spec, {r.id: spec.text_of(r) for r in rows}, retire)

    async def _verify(self, spec: _Indexed, written: dict[str, str], retire: Sequence[int] = ()) -> None:
        """Re-read what was just written: a row deleted meanwhile leaves the index again, and one changed
        meanwhile is queued again, so a write that lost a race never outlives the winner's."""
        async with self.database.transaction() as db:
            now = {row.id: spec.text_of(row) for row in await fetch_by_ids(db, spec.model, list(written))}
            changed = [i for i, text in written.items() if i in now and now[i] != text]
            if changed:
                await outbox.enqueue_upserts(db, spec.kind, changed)
            if retire:
                await outbox.done(db, list(retire))
        await self._remove_gone(spec.table, [i for i in written if i not in now])

    async def _remove_gone(self, table: Table, gone: Sequence[str]) -> None:
        """Take out of the index rows that PostgreSQL no longer has: a write that raced an erasure (a
        message, or a fact a deriver stored), so they are erased ones, to be purged from the files."""
        if gone:
            await _bounded(self.index.delete(table, ids=gone))
            self._erased(table)

    # --- rebuild ---------------------------------------------------------------------------------------

    async def reindex(
        self,
        *,
        app_id: str | None = None,
        progress: Callable[[str, int], Any] | None = None,
    ) -> dict[str, int]:
        """Rebuild the index from PostgreSQL: all of it, or one app's rows. ``progress(table, total)`` may
        return an object with ``update(n)`` (a tqdm bar, say) that is told of each batch."""
        if app_id is not None:
            for table in (DOCUMENTS, MESSAGES):
                await self.index.delete(table, scope={"app_id": app_id})
        else:
            await self.index.truncate()
        if app_id is None:
            async with self.database.transaction() as db:
                dropped = await outbox.clear(db)
            if dropped:
                log.info("dropped %d outbox entries: the rebuild supersedes them", dropped)
        counts: dict[str, int] = {}
        for spec in INDEXED:
            model = spec.model
            async with self.database.transaction() as db:
                total = await count_rows(db, model, app_id=app_id)
            bar = progress(spec.table, total) if progress else None
            done, after = 0, -1
            while True:
                async with self.database.transaction() as db:
                    rows = await rows_after(db, model, after, self.batch_size, app_id=app_id)
                if not rows:
                    break
                await self._embed_and_upsert(spec, rows)
                after, done = rows[-1].seq, done + len(rows)
                if bar is not None:
                    bar.update(len(rows))
            counts[spec.table] = done
        await self.index.maintain()
        return counts
