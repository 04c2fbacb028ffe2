"""The LanceDB index: vectors and full-text for documents and messages, rebuildable from PostgreSQL.

Two tables, their Arrow schemas declared once below. Rows hold only what search needs (ids to scope
and join back, the indexed text, the vector); PostgreSQL remains the source of truth, and search
results are read back from it. Writes arrive in batches from one writer (the index sync); `maintain`
compacts small fragments and builds the ANN index once a table passes `vector_store.ann_min_rows`.

LanceDB deletes are soft: a deleted row stays in its data file (a deletion file hides it), in the index
files built over it, and in every older version until those are cleaned up. `purge_deleted` and
`remove_old_versions` take erased rows out of the files for good (see `IndexSync.purge`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Final, Literal, TypeVar

import numpy as np
import pyarrow as pa

from rapport.settings import Settings
from storage.errors import InvalidError, UnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

# What LanceDB says when another process created the same table or index a moment earlier.
RACE_SIGNS = ("commit conflict", "concurrent transaction", "not found", "already exists")

DOCUMENTS: Final = "documents"
MESSAGES: Final = "messages"
Table = Literal["documents", "messages"]

# Scope columns each table can be filtered and deleted by.
SCOPES: dict[str, tuple[str, ...]] = {
    DOCUMENTS: ("id", "app_id", "user_id", "collection_id"),
    MESSAGES: ("id", "app_id", "user_id", "session_id"),
}


def schema(table: Table, dimension: int) -> pa.Schema:
    """The one declaration of each table's columns."""
    vector = pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False)
    created_at = pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False)
    ids = [pa.field(name, pa.string(), nullable=False) for name in SCOPES[table]]
    if table == DOCUMENTS:
        return pa.schema([*ids, vector, created_at])
    return pa.schema([*ids, pa.field("text", pa.string(), nullable=False), vector, created_at])


Scope = Mapping[str, str | None]
"""Equality filters on a table's scope columns; None leaves a column unconstrained."""


def full_text_config() -> Any:
    """The full-text index on messages' text, as created and as rebuilt by a purge."""
    from lancedb.index import FTS

    return FTS(with_position=False)


def _vanished(exc: BaseException) -> bool:
    """Whether a read failed because files of the version it began on were removed meanwhile (LanceDB
    says ``lance error: Not found: <path>``); the latest version does not need them."""
    return isinstance(exc, RuntimeError) and "Not found" in str(exc)


class IndexDimensionMismatch(InvalidError):
    """The index was built with another embedding model than the configured one."""


def quote(value: str) -> str:
    """A SQL string literal for LanceDB filters."""
    return "'" + value.replace("'", "''") + "'"


def where(**equals: str | None) -> str:
    """``a = 'x' AND b = 'y'`` for the values given (None means unconstrained)."""
    parts = [f"{column} = {quote(value)}" for column, value in equals.items() if value is not None]
    return " AND ".join(parts) if parts else "true"


@dataclass(frozen=True, slots=True)
class AnnOptions:
    """When the ANN index is built and how it is searched (vector_store.ann_* settings)."""

    min_rows: int = 100_000
    ef: int = 100
    refine_factor: int = 5


# Rows from which a table keeps a scalar index of its ids. A merge_insert (every write is one) joins its
# rows to the table's ids: without the index it reads all of them, with it it looks them up. Three new
# rows into a 384-dimension table: 7.5 ms at 1,000 rows, 12.6 ms at 20,000 and 31 ms at 200,000 read
# whole; 8-12 ms at every size through the index (a little slower than reading at a thousand rows).
ID_INDEX_MIN_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float


class VectorIndex:
    """One LanceDB database (a directory or any LanceDB URI) holding Rapport's two tables."""

    def __init__(
        self, uri: str, connection: Any, tables: dict[str, Any], dimension: int, ann: AnnOptions
    ) -> None:
        self.uri = uri
        self._db = connection
        self._tables = tables
        self.dimension = dimension
        self.ann = ann
        self.id_index_min_rows = ID_INDEX_MIN_ROWS
        # This process's writes to a table go one at a time: two merge_inserts of the same new ids that
        # overlap both insert them (measured: every row twice), e.g. the single writer's background round
        # and an inline write of the same rows.
        self._writing = {name: asyncio.Lock() for name in tables}

    @classmethod
    async def open(
        cls, uri: str, dimension: int, ann: AnnOptions | None = None, *, recreate: bool = False
    ) -> VectorIndex:
        """Open (creating if needed) both tables. Readers always see the latest committed version.

        ``recreate`` drops the tables first, whatever they hold (a rebuild after changing the model).
        """
        import lancedb

        db = await lancedb.connect_async(uri, read_consistency_interval=timedelta(0))
        if recreate:
            for name in (DOCUMENTS, MESSAGES):
                await db.drop_table(name, ignore_missing=True)
        tables: dict[str, Any] = {}
        for name in (DOCUMENTS, MESSAGES):
            # Several processes open a fresh index at once when a service starts (API replicas, the index
            # writer, derivation workers): one creates each table and index, the others see a conflict
            # or a table that is not visible yet, and look again.
            for attempt in range(10):
                try:
                    tables[name] = await cls._open_table(db, uri, name, dimension)
                    break
                except (RuntimeError, ValueError) as exc:
                    racing = any(sign in str(exc) for sign in RACE_SIGNS)
                    if isinstance(exc, IndexDimensionMismatch) or not racing or attempt == 9:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
        return cls(uri, db, tables, dimension, ann or AnnOptions())

    @staticmethod
    async def _open_table(db: Any, uri: str, name: str, dimension: int) -> Any:
        if name in set((await db.list_tables()).tables):
            table = await db.open_table(name)
            found = (await table.schema()).field("vector").type.list_size
            if found != dimension:
                raise IndexDimensionMismatch(
                    f"the {name} index at {uri} holds {found}-dimensional vectors but the embedding model "
                    f"makes {dimension}: run `rapport reindex --recreate` after changing embedding.model"
                )
        else:
            table = await db.create_table(name, schema=schema(name, dimension), exist_ok=True)  # type: ignore[arg-type]
        # Full-text search needs the index to exist; rows added later are searched unindexed until
        # `maintain` folds them in.
        if name == MESSAGES and not any(i.index_type == "FTS" for i in await table.list_indices()):
            await table.create_index("text", config=full_text_config())
        return table

    async def truncate(self) -> None:
        """Remove every row of both tables (keeping their schemas and indexes)."""
        for name, table in self._tables.items():
            async with self._writing[name]:
                await table.delete("true")

    # --- writes ----------------------------------------------------------------------------------------

    async def upsert(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace rows by id. Each row carries the table's columns; ``vector`` a numpy row."""
        if not rows:
            return
        unique = {row["id"]: row for row in rows}  # LanceDB refuses two rows for one id in a batch
        data = pa.Table.from_pylist(list(unique.values()), schema=schema(table, self.dimension))
        async with self._writing[table]:
            await (
                self._tables[table]
                .merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

    async def delete(self, table: Table, *, ids: Sequence[str] = (), scope: Scope | None = None) -> None:
        """Remove rows by id, and/or every row matching ``scope`` (e.g. ``{"collection_id": ...}``)."""
        if scope and any(value is not None for value in scope.values()):
            self._check_scope(table, scope)
        async with self._writing[table]:
            if ids:
                await self._tables[table].delete(f"id IN ({', '.join(quote(i) for i in ids)})")
            if scope and any(value is not None for value in scope.values()):
                await self._tables[table].delete(where(**scope))

    # --- reads -----------------------------------------------------------------------------------------

    async def nearest(
        self, table: Table, vector: np.ndarray, *, scope: Scope, limit: int, exact: bool = False
    ) -> list[Hit]:
        """The rows closest to ``vector`` by cosine similarity (1 = same direction), within the scope."""
        return (await self.nearest_each(table, [vector], scope=scope, limit=limit, exact=exact))[0]

    async def nearest_each(
        self,
        table: Table,
        vectors: Sequence[np.ndarray] | np.ndarray,
        *,
        scope: Scope,
        limit: int,
        exact: bool = False,
    ) -> list[list[Hit]]:
        """``nearest`` for each of ``vectors``, in one query (one scan of the scope for all of them)."""
        self._check_scope(table, scope)
        if len(vectors) == 0:
            return []
        query = (
            self._tables[table]
            .query()
            .nearest_to([np.asarray(v, dtype=np.float32) for v in vectors])
            .distance_type("cosine")
            .where(where(**scope))
            .select(["id", "_distance"])
            .limit(limit)
        )
        # Re-ranking ANN candidates on the full vectors makes `_distance` exactly 1 - cos in every plan
        # (the index alone reports its own, quantised scale) and lifts recall.
        if exact:
            query = query.bypass_vector_index()
        else:
            query = query.ef(self.ann.ef).refine_factor(self.ann.refine_factor)
        rows = await self._read(query.to_list)
        hits: list[list[Hit]] = [[] for _ in vectors]
        for row in rows:  # a single vector's rows carry no query_index
            hits[row.get("query_index", 0)].append(Hit(row["id"], 1.0 - float(row["_distance"])))
        for each in hits:
            each.sort(key=lambda hit: -hit.score)
        return hits

    async def matching(self, table: Table, text: str, *, scope: Scope, limit: int) -> list[Hit]:
        """Rows whose indexed text best matches ``text`` (BM25; stemmed, stop words dropped)."""
        self._check_scope(table, scope)

        async def search() -> list[dict[str, Any]]:
            found = await self._tables[table].search(text, query_type="fts")
            return await found.where(where(**scope)).select(["id", "_score"]).limit(limit).to_list()  # type: ignore[no-any-return]

        rows = await self._read(search)
        return [Hit(row["id"], float(row["_score"])) for row in rows]

    async def count(self, table: Table, scope: Scope | None = None) -> int:
        filter = where(**(scope or {}))
        return int(
            await self._read(lambda: self._tables[table].count_rows(None if filter == "true" else filter))
        )

    # --- upkeep ----------------------------------------------------------------------------------------

    async def maintain(self, tables: Sequence[str] | None = None) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the indexes, prune versions older than an hour,
        and build the ANN and scalar indexes once a table is big enough for them to pay: the vectors' and
        the scope's from ``ann.min_rows``, the ids' (which every upsert and delete looks rows up by) from
        ``id_index_min_rows``. ``tables``: only these (default: every table)."""
        from lancedb.index import BTree, HnswSq

        report: dict[str, Any] = {}
        for name, table in self._tables.items():
            if tables is not None and name not in tables:
                continue
            started = time.monotonic()
            rows = await table.count_rows()
            indices = {i.name: i for i in await table.list_indices()}
            if rows >= self.ann.min_rows and "vector_idx" not in indices:
                log.info("building the ANN index on %s (%d rows)", name, rows)
                await table.create_index("vector", config=HnswSq(distance_type="cosine"))
                scope = "collection_id" if name == DOCUMENTS else "user_id"
                await table.create_index(scope, config=BTree())
            if rows >= self.id_index_min_rows and "id_idx" not in indices:
                log.info("building the id index on %s (%d rows)", name, rows)
                await table.create_index("id", config=BTree())
            await table.optimize(cleanup_older_than=timedelta(hours=1))
            report[name] = {"rows": rows, "seconds": round(time.monotonic() - started, 3)}
        return report

    # --- erasure: rows out of the files ----------------------------------------------------------------

    async def purge_deleted(self, table: Table) -> dict[str, Any]:
        """Take deleted rows out of the table's current files: rewrite every fragment that holds any
        (LanceDB's compaction leaves a fragment under 10% deleted as it is), which remaps the indexes
        without them, and rebuild the full-text and scalar indexes still built over a fragment that a
        delete dropped whole (no compaction sees those rows: their index entries stay otherwise). The
        files of earlier versions keep the rows until ``remove_old_versions``.

        Needs ``pylance`` (the Lance that LanceDB embeds): LanceDB's ``optimize`` takes no compaction
        options. Holds the table's writes meanwhile: 0.2 s at 10,000 messages, 3.5-7.5 s at 100,000 with
        every index (the HNSW remap is most of it), on a busy 2-core machine; about linear in the rows
        of the fragments rewritten (below a million rows, compaction leaves one)."""
        from lancedb.index import BTree

        started = time.monotonic()
        async with self._writing[table]:
            uri, options = await self._tables[table].uri(), await self._tables[table].latest_storage_options()
            rewritten, stale, vector_stale = await asyncio.to_thread(_materialize_deletions, uri, options)
            for column in stale:
                config = full_text_config() if column == "text" else BTree()
                await self._tables[table].create_index(column, config=config, replace=True)
            version = await asyncio.to_thread(lambda: _dataset(uri, options).version)
        if vector_stale:
            # Rebuilding HNSW takes about a minute per 100,000 rows here: the quantised vectors (no text)
            # of a fragment erased whole stay in it until `rapport reindex` or its next rebuild.
            log.warning("the ANN index of %s still covers rows erased in whole fragments", table)
        return {
            "version": version,  # the versions before it may hold the rows: see remove_old_versions
            "fragments_rewritten": rewritten,
            "indexes_rebuilt": stale,
            "ann_keeps_erased_vectors": vector_stale,
            "seconds": round(time.monotonic() - started, 3),
        }

    async def remove_old_versions(self, table: Table, before: int) -> dict[str, Any]:
        """Delete every version older than ``before`` and the files only they use (the latest version is
        always kept): after ``purge_deleted``, the last files that held the purged rows. By number, not
        age: a compaction commits twice, and the first still holds the old fragments."""
        async with self._writing[table]:
            uri, options = await self._tables[table].uri(), await self._tables[table].latest_storage_options()
            stats = await asyncio.to_thread(_cleanup, uri, options, before)
        return {
            "versions_removed": stats.old_versions,
            "bytes_removed": stats.bytes_removed,
            "failed_deletes": stats.failed_deletes,  # files an object store refused to delete: try again
        }

    # --- reading -----------------------------------------------------------------------------------------

    async def _read(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run a read; once more if a purge removed the files of the version it began on (a reader that
        is slower than ``vector_store.erasure_purge_grace_s``), which the latest version does not need."""
        try:
            async with self._reading():
                return await run()
        except RuntimeError as exc:
            if not _vanished(exc):
                raise
            log.info("a read lost its version's files to a purge; reading the latest: %s", exc)
        async with self._reading():
            return await run()

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Reads that fail on I/O (a lost object store or network file system) mean the index is down
        for now, not that the query is wrong: the API answers those with 503 and Retry-After."""
        try:
            yield
        except OSError as exc:
            raise UnavailableError(
                "search index",
                f"the search index at {self.uri} cannot be read just now ({exc}); retry shortly",
            ) from exc

    @staticmethod
    def _check_scope(table: Table, scope: Scope) -> None:
        unknown = set(scope) - set(SCOPES[table])
        if unknown:
            raise ValueError(f"{table} rows cannot be scoped by {sorted(unknown)}")


def _dataset(uri: str, storage_options: dict[str, str] | None) -> Any:
    import lance

    return lance.dataset(uri, storage_options=storage_options)


def _materialize_deletions(uri: str, storage_options: dict[str, str] | None) -> tuple[int, list[str], bool]:
    """(fragments rewritten, columns whose scalar or full-text index must be rebuilt, whether the ANN
    index still covers a dropped fragment), for ``VectorIndex.purge_deleted``."""
    dataset = _dataset(uri, storage_options)
    rewritten = 0
    if any(f.metadata.deletion_file is not None for f in dataset.get_fragments()):
        # Threshold 0: a fragment with a single deleted row among a million is rewritten too.
        rewritten = dataset.optimize.compact_files(materialize_deletions_threshold=0.0).fragments_removed
        dataset = _dataset(uri, storage_options)
    live = {f.fragment_id for f in dataset.get_fragments()}
    stale, vector_stale = [], False
    for index in dataset.describe_indices():
        if all(set(segment.fragment_ids) <= live for segment in index.segments):
            continue
        if index.field_names == ["vector"]:
            vector_stale = True
        else:
            stale.extend(index.field_names)
    return rewritten, stale, vector_stale


def _cleanup(uri: str, storage_options: dict[str, str] | None, before: int) -> Any:
    dataset = _dataset(uri, storage_options)
    old = [v["version"] for v in dataset.versions() if v["version"] < before]
    if not old:
        return SimpleNamespace(old_versions=0, bytes_removed=0, failed_deletes=0)
    return dataset.cleanup_old_versions(versions=old)


async def open_index(settings: Settings, dimension: int, *, recreate: bool = False) -> VectorIndex:
    """The index the settings name (vector_store.uri, else <app.home>/lancedb), with their ANN options."""
    store = settings.vector_store
    ann = AnnOptions(min_rows=store.ann_min_rows, ef=store.ann_ef, refine_factor=store.ann_refine_factor)
    return await VectorIndex.open(settings.vector_store_uri, dimension, ann, recreate=recreate)
