"""Builders for what the deriver would have left behind (facts, summaries) and for indexed messages,
shared by the context, dialectic and API tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster.index_sync import drain
from pipelines.deriver.derive import SUMMARY_LABELS
from pipelines.deriver.prompts import SummaryType
from pipelines.memory import Memory
from storage import collections, documents, messages, metamessages
from storage.query import Record
from tests.storage.factories import Tree


async def say(memory: Memory, tree: Tree, *turns: str, session_id: str | None = None) -> list[Record]:
    """Messages in order (the user first, then the assistant, alternately), indexed for search."""
    async with memory.database.transaction() as db:
        rows = await messages.create_messages(
            db,
            tree.app_id,
            tree.user_id,
            session_id or tree.session_id,
            [{"content": t, "is_user": i % 2 == 0, "metadata": {}} for i, t in enumerate(turns)],
        )
    while await drain(memory.writer):
        pass
    return rows


async def add_fact(
    memory: Memory,
    tree: Tree,
    text: str,
    *,
    sources: Sequence[Record] = (),
    date: str | None = None,
    kind: str = "fact",
) -> Record:
    """A fact in the user's honcho collection, stored and indexed as the deriver stores one."""
    ids = [m.id for m in sources]
    metadata: dict[str, Any] = {"kind": kind, "confidence": 1.0, "times_derived": 1, "model": "test/double"}
    if ids:
        metadata |= {"message_id": ids[0], "message_ids": ids, "session_id": tree.session_id}
    if date is not None:
        metadata["date"] = date
    vector = (await memory.embedder.embed([text]))[0]
    async with memory.documents_transaction() as tx:
        honcho = await collections.get_or_create_reserved(tx.db, tree.app_id, tree.user_id)
        row = await documents.create_document(
            tx.db, tree.app_id, tree.user_id, honcho.id, content=text, metadata=metadata
        )
        tx.add(row, vector)
    return row


async def add_summary(memory: Memory, tree: Tree, kind: SummaryType, text: str, after: Record) -> Record:
    """A summary metamessage of the kind ("SHORT" or "LONG") on the message ``after``."""
    async with memory.database.transaction() as db:
        return await metamessages.create_metamessage(
            db,
            tree.app_id,
            tree.user_id,
            label=SUMMARY_LABELS[kind],
            content=text,
            session_id=after.session_id,
            message_id=after.id,
            metadata={"message_count": 1, "summary_type": kind},
        )
