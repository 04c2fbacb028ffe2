"""The API's one door to what Rapport stores: ``Memory.run`` for plain reads and writes (a storage
function in a transaction of its own), and a method for each write that the index or a model must
follow (messages, documents, clones, erasures) and for searches.

Each write commits its rows and its outbox entries in one transaction. Documents are then written to the
index before the call returns (so they are queryable at once); if that write fails the document is still
stored and the index sync repairs the index from the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from models.embedding import TextEmbedder
from pipelines import retrieval
from pipelines.indexing import IndexWriter
from storage import collections, conclusions, documents, erasure, messages, outbox, sessions
from storage.db import Database
from storage.index import VectorIndex
from storage.query import Record
from storage.tables import Document
from storage.workspaces import DEFAULT_ASSISTANT

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class DocumentBatch:
    """Documents stored in a ``Memory.documents_transaction``, with their vectors."""

    db: Any = None  # the transaction's connection
    rows: list[Record] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    removed: list[str] = field(default_factory=list)  # ids of documents deleted in the transaction

    def add(self, row: Record, vector: np.ndarray) -> None:
        self.rows.append(row)
        self.vectors.append(vector)


@dataclass
class Memory:
    """The stores and models a request works with."""

    database: Database
    embedder: TextEmbedder
    index: VectorIndex
    writer: IndexWriter
    assistant_peer: str = DEFAULT_ASSISTANT  # app.assistant_peer: who a v1 is_user=false message is from

    # --- the door ---------------------------------------------------------------------------------------

    async def run(
        self,
        op: Callable[Concatenate[AsyncConnection, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """One storage operation, ``op(db, *args, **kwargs)`` (a function of storage/), in a transaction of
        its own: how the API reads and writes what needs neither the index nor a model. What does (a
        message, a document, a search, an erasure) has its own method below."""
        async with self.database.transaction() as db:
            return await op(db, *args, **kwargs)

    # --- messages (indexed in the background) ---------------------------------------------------------
    # A trigger (migration 0003) writes the outbox entry of every inserted or updated message, in the
    # same statement: nothing here has to remember to.

    async def add_message(
        self,
        app_id: str,
        user_id: str,
        session_id: str,
        *,
        content: str,
        is_user: bool,
        metadata: dict[str, Any],
    ) -> Record:
        return await self.run(
            messages.create_message,
            app_id,
            user_id,
            session_id,
            content=content,
            is_user=is_user,
            metadata=metadata,
            assistant=self.assistant_peer,
        )

    async def add_messages(
        self, app_id: str, user_id: str, session_id: str, items: list[dict[str, Any]]
    ) -> list[Record]:
        return await self.run(
            messages.create_messages, app_id, user_id, session_id, items, assistant=self.assistant_peer
        )

    async def add_peer_messages(
        self, workspace: str, session: str, items: list[dict[str, Any]]
    ) -> list[Record]:
        """v3: messages of peers in a named session (made, with its workspace and peers, if missing)."""
        return await self.run(messages.create_peer_messages, workspace, session, items)

    async def create_session(self, app_id: str, user_id: str, metadata: dict[str, Any]) -> Record:
        """A v1 session: its members are the user and the app's assistant peer."""
        return await self.run(
            sessions.create_session, app_id, user_id, metadata, assistant=self.assistant_peer
        )

    async def delete_session(self, app_id: str, name: str) -> None:
        """v3: the session and everything in it (its conclusions too), in PostgreSQL and then in the
        index."""
        async with self.database.transaction() as db:
            row, drawn = await sessions.delete_named_session(db, app_id, name)
            entries = [await outbox.enqueue_delete(db, "message", scope={"session_id": row.id})]
            entries += await outbox.enqueue_deletes(db, "document", drawn)
        await self._apply(entries)

    async def update_message(
        self, app_id: str, user_id: str, session_id: str, message_id: str, metadata: dict[str, Any]
    ) -> Record:
        """New metadata may change what is indexed (a speaker or date, see ``indexing.message_text``): the
        update trigger (migration 0009) then re-indexes the message; other metadata leaves the index alone."""
        return await self.run(messages.update_message, app_id, user_id, session_id, message_id, metadata)

    async def clone_session(
        self, app_id: str, user_id: str, session_id: str, *, message_id: str | None, deep_copy: bool
    ) -> Record:
        """Copies up to ``sessions.CLONE_MAX`` messages in the database; the index sync embeds the copies
        in the background, so they become searchable shortly after the call returns."""
        return await self.run(
            sessions.clone_session, app_id, user_id, session_id, message_id=message_id, deep_copy=deep_copy
        )

    async def search_messages(self, **query: Any) -> list[tuple[Record, float]]:
        return await retrieval.search_messages(self.database, self.index, self.embedder, **query)

    # --- documents (queryable when the call returns) ---------------------------------------------------

    async def add_document(
        self, app_id: str, user_id: str, collection_id: str, *, content: str, metadata: dict[str, Any]
    ) -> Record:
        vector = await self.embedder.embed([documents.check_content(content)])
        async with self.database.transaction() as db:
            document = await documents.create_document(
                db, app_id, user_id, collection_id, content=content, metadata=metadata
            )
            entries = await outbox.enqueue_upserts(
                db, "document", [document.id], delay_s=outbox.INLINE_GRACE_S
            )
        await self._write_documents([document], vector, entries)
        return document

    async def update_document(
        self,
        app_id: str,
        user_id: str,
        collection_id: str,
        document_id: str,
        *,
        content: str | None,
        metadata: dict[str, Any] | None,
    ) -> Record:
        vector = (
            await self.embedder.embed([documents.check_content(content)]) if content is not None else None
        )
        async with self.database.transaction() as db:
            document = await documents.update_document(
                db, app_id, user_id, collection_id, document_id, content=content, metadata=metadata
            )
            entries = (
                await outbox.enqueue_upserts(db, "document", [document.id], delay_s=outbox.INLINE_GRACE_S)
                if vector is not None
                else []
            )
        if vector is not None:
            await self._write_documents([document], vector, entries)
        return document

    async def delete_document(self, app_id: str, user_id: str, collection_id: str, document_id: str) -> None:
        async with self.database.transaction() as db:
            await documents.delete_document(db, app_id, user_id, collection_id, document_id)
            entry = await outbox.enqueue_delete(db, "document", target_id=document_id)
        await self._apply([entry])

    async def delete_collection(self, app_id: str, user_id: str, collection_id: str) -> None:
        async with self.database.transaction() as db:
            await collections.delete_collection(db, app_id, user_id, collection_id)
            entry = await outbox.enqueue_delete(db, "document", scope={"collection_id": collection_id})
        await self._apply([entry])

    @asynccontextmanager
    async def documents_transaction(self) -> AsyncIterator[DocumentBatch]:
        """One transaction in which documents are stored with vectors already computed (``batch.add``)
        and others deleted (``batch.removed``); once it commits the index follows, through the outbox
        like ``add_document``'s and ``delete_document``'s."""
        batch = DocumentBatch()
        async with self.database.transaction() as db:
            batch.db = db
            yield batch
            ids = [row.id for row in batch.rows]
            entries = await outbox.enqueue_upserts(db, "document", ids, delay_s=outbox.INLINE_GRACE_S)
            removals = await outbox.enqueue_deletes(db, "document", batch.removed)
        if batch.rows:
            await self._write_documents(batch.rows, np.stack(batch.vectors), entries)
        if removals:
            await self._apply(removals)

    async def query_documents(self, **query: Any) -> list[Record]:
        return await retrieval.query_documents(self.database, self.index, self.embedder, **query)

    # --- v3 conclusions (documents of observer/observed collections; queryable when the call returns) ---

    async def add_conclusions(self, workspace: str, items: list[dict[str, Any]]) -> list[Record]:
        """Up to 100 conclusions, embedded, stored and indexed; returned with their peers' and sessions'
        names, in order."""
        if not items:
            await self.run(conclusions.resolve, workspace, items)  # the clear error for an empty batch
        vectors = await self.embedder.embed([str(item["content"]) for item in items])
        async with self.documents_transaction() as batch:
            placed = await conclusions.resolve(batch.db, workspace, items)
            new = [
                documents.NewDocument(
                    c.app_id, c.user_id, c.collection_id, c.content, {}, "explicit", c.session_id
                )
                for c in placed
            ]
            for row, vector in zip(await documents.create_many(batch.db, new), vectors, strict=True):
                batch.add(row, vector)
        return await self.run(conclusions.by_ids, [row.id for row in batch.rows])

    async def query_conclusions(
        self, workspace: str, query: str, *, top_k: int, distance: float | None, filters: Any
    ) -> list[Record]:
        """The conclusions of one observer about one observed peer (named by ``filters``) closest to
        ``query``, best first, no further than ``distance`` (cosine distance) when given."""
        scope = await self.run(conclusions.query_scope, workspace, filters)
        if scope.collection_id is None:
            return []
        return await retrieval.nearest_documents(
            self.index,
            self.embedder,
            query,
            scope={"app_id": scope.app_id, "user_id": scope.user_id, "collection_id": scope.collection_id},
            top_k=top_k,
            distance=distance,
            # only those that still hold (a dream's superseded ones are in the list and the history)
            keep=lambda ids: self.run(
                conclusions.matching, ids, [*scope.conditions, Document.invalid_at.is_(None)]
            ),
        )

    async def delete_conclusion(self, workspace: str, conclusion_id: str) -> None:
        async with self.database.transaction() as db:
            await conclusions.delete_conclusion(db, workspace, conclusion_id)
            entry = await outbox.enqueue_delete(db, "document", target_id=conclusion_id)
        await self._apply([entry])

    # --- erasure ---------------------------------------------------------------------------------------

    async def erase_user(self, app_id: str, user_id: str) -> erasure.Erased:
        """Every row of the user in one transaction, then their index entries (storage/erasure.py)."""
        erased = await self.run(erasure.erase_user, app_id, user_id)
        await self._apply(erased.index_entries)
        return erased

    async def erase_app(self, app_id: str) -> erasure.Erased:
        erased = await self.run(erasure.erase_app, app_id)
        await self._apply(erased.index_entries)
        return erased

    # --- the index -------------------------------------------------------------------------------------

    async def index_lag(self) -> outbox.Lag:
        return await self.run(outbox.lag)

    async def _write_documents(self, rows: Sequence[Record], vectors: Any, entries: Sequence[int]) -> None:
        try:
            await self.writer.write_documents(rows, vectors, entries)
        except Exception:
            # Stored and committed: the outbox entry stays, and the index sync applies it shortly.
            log.exception(
                "index write for documents %s failed; the index sync will repair it", [r.id for r in rows]
            )

    async def _apply(self, entries: Sequence[int]) -> None:
        try:
            await self.writer.apply(entries)
        except Exception:
            log.exception("index update %s failed; the index sync will repair it", list(entries))
