"""Documents in a collection."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ARRAY, Text, bindparam, delete, insert, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.collections import RESERVED_NAME, get_collection, is_reserved
from storage.errors import InvalidError
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_under_parent,
    record_columns,
    row_keys,
    update_one,
)
from storage.tables import NORMALIZED_CONTENT, Collection, Document
from storage.validation import DOCUMENT_CONTENT_MAX, check_filter, check_ids, check_metadata, check_text


def _where(app_id: str, user_id: str, collection_id: str, document_id: str) -> Keys:
    return row_keys("document", document_id, collection_id=collection_id, user_id=user_id, app_id=app_id)


def check_content(content: Any) -> str:
    """A document's content: 1 to 100,000 storable characters."""
    return check_text(content, max_length=DOCUMENT_CONTENT_MAX, min_length=1)


async def create_document(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    collection_id: str,
    *,
    content: str,
    metadata: dict[str, Any] | None = None,
) -> Record:
    check_ids(app=app_id, user=user_id, collection=collection_id)
    values = {
        "id": new_id(),
        "app_id": app_id,
        "user_id": user_id,
        "collection_id": collection_id,
        "content": check_content(content),
        "metadata_": check_metadata(metadata),
    }
    parent = {"id": collection_id, "user_id": user_id, "app_id": app_id}
    return await insert_under_parent(
        db, Document, values, Collection, parent, f"collection {collection_id!r}"
    )


async def get_document(
    db: AsyncConnection, app_id: str, user_id: str, collection_id: str, document_id: str
) -> Record:
    where = _where(app_id, user_id, collection_id, document_id)
    return await fetch_one(db, Document, where, f"document {document_id!r}")


async def lock_by_id(db: AsyncConnection, document_id: str) -> Record | None:
    """The document, locked for update until the transaction ends; None if it is gone (erased)."""
    query = select(*record_columns(Document)).where(Document.id == document_id).with_for_update()
    return (await db.execute(query)).first()


async def update_document(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    collection_id: str,
    document_id: str,
    *,
    content: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    if content is None and metadata is None:
        raise InvalidError("give new content, new metadata, or both")
    values: dict[str, Any] = {}
    if content is not None:
        values["content"] = check_content(content)
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    where = _where(app_id, user_id, collection_id, document_id)
    return await update_one(db, Document, where, values, f"document {document_id!r}")


async def delete_document(
    db: AsyncConnection, app_id: str, user_id: str, collection_id: str, document_id: str
) -> None:
    collection = await get_collection(db, app_id, user_id, collection_id)
    if is_reserved(collection.name):
        raise InvalidError(
            f"documents in the {RESERVED_NAME!r} collection are derived facts and cannot be deleted",
            field=("collection_id",),
        )
    document = await get_document(db, app_id, user_id, collection_id, document_id)
    await db.execute(delete(Document).where(Document.id == document.id))


async def list_documents(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    collection_id: str,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    await get_collection(db, app_id, user_id, collection_id)
    where = {"collection_id": collection_id}
    return await fetch_page(db, Document, where, filter=filter, reverse=reverse, page=page, size=size)


async def fetch_many(
    db: AsyncConnection,
    ids: Sequence[str],
    *,
    app_id: str,
    user_id: str,
    collection_id: str,
    filter: dict[str, Any] | None = None,
) -> dict[str, Record]:
    """The documents among ``ids`` in this collection whose metadata contains ``filter``, by id."""
    if not ids:
        return {}
    check_ids(app=app_id, user=user_id, collection=collection_id)
    conditions = [
        Document.id.in_(list(ids)),
        Document.collection_id == collection_id,
        Document.user_id == user_id,
        Document.app_id == app_id,
    ]
    metadata_filter = check_filter(filter)
    if metadata_filter is not None:
        conditions.append(Document.metadata_.contains(metadata_filter))
    rows = await db.execute(select(*record_columns(Document)).where(*conditions))
    return {row.id: row for row in rows}


def times_derived(metadata: dict[str, Any] | None) -> int:
    """How often a fact was derived (its ``times_derived`` metadata; once when unset or unreadable)."""
    value = (metadata or {}).get("times_derived", 1)
    return value if isinstance(value, int) and value > 0 else 1


def source_ids(metadata: dict[str, Any] | None) -> list[str]:
    """The ids of the messages a fact was derived from, in the order they were added."""
    metadata = metadata or {}
    ids = metadata.get("message_ids")
    if isinstance(ids, list) and ids:
        return [i for i in ids if isinstance(i, str)]
    return [metadata["message_id"]] if isinstance(metadata.get("message_id"), str) else []


def normalized(text: str) -> str:
    """A fact's text for exact-duplicate checks: lower case, letters and digits, single spaces."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# A document whose hashed normalised content is among ``:texts``' (a text array): the condition the index of
# migration 0007 answers.
NORMALIZED_AMONG = (
    f"md5({NORMALIZED_CONTENT}) = ANY(ARRAY(SELECT md5(t) FROM unnest(CAST(:texts AS text[])) AS t))"
)


async def find_normalized(db: AsyncConnection, collection_id: str, texts: Sequence[str]) -> dict[str, Record]:
    """The collection's documents whose normalized content is one of ``texts``' (already normalized)."""
    if not texts:
        return {}
    # Written out, not bound: the planner matches the index's expression only with the same constants.
    key = literal_column(NORMALIZED_CONTENT, type_=Text)
    hashed = text(NORMALIZED_AMONG).bindparams(bindparam("texts", list(texts), type_=ARRAY(Text)))
    rows = await db.execute(
        select(*record_columns(Document), key.label("normalized")).where(
            Document.collection_id == collection_id,
            hashed,
            key.in_(list(texts)),
            Document.invalid_at.is_(None),  # one a dream superseded is not what a new fact repeats
        )
    )
    return {row.normalized: cast(Record, row) for row in rows}


@dataclass(frozen=True, slots=True)
class NewDocument:
    app_id: str
    user_id: str
    collection_id: str
    content: str
    metadata: dict[str, Any]
    # v3's level and source session; by default what the deriver's metadata says (an inference is
    # deductive, a fact explicit; ``session_id``)
    level: str | None = None
    session_id: str | None = None

    def stored_level(self) -> str:
        if self.level is not None:
            return self.level
        return "deductive" if self.metadata.get("kind") == "inference" else "explicit"

    def stored_session(self) -> str | None:
        found = self.session_id or self.metadata.get("session_id")
        return found if isinstance(found, str) else None


async def create_many(db: AsyncConnection, items: Sequence[NewDocument]) -> list[Record]:
    """Many documents in one statement, in order, into collections the caller has just locked (the
    deriver's own): no per-row parent check."""
    if not items:
        return []
    values = [
        {
            "id": new_id(),
            "app_id": item.app_id,
            "user_id": item.user_id,
            "collection_id": item.collection_id,
            "content": check_content(item.content),
            "metadata_": check_metadata(item.metadata),
            "level": item.stored_level(),
            "session_id": item.stored_session(),
        }
        for item in items
    ]
    rows = (await db.execute(insert(Document).values(values).returning(*record_columns(Document)))).all()
    by_id = {row.id: row for row in rows}
    return [by_id[value["id"]] for value in values]


async def delete_derived_from(
    db: AsyncConnection, collection_ids: Sequence[str], message_ids: Sequence[str]
) -> list[str]:
    """Remove the documents of these collections that were derived from these messages alone (or that
    name no source): what a re-derivation of those messages replaces. A fact derived (or reinforced)
    from a message it did not read, one written since it began, stays. Their ids."""
    result = await db.execute(
        text(
            """
            DELETE FROM documents d
            WHERE d.collection_id = ANY(:collections)
              AND NOT EXISTS (
                  SELECT 1 FROM jsonb_array_elements_text(
                      CASE WHEN jsonb_typeof(d.metadata -> 'message_ids') = 'array'
                           THEN d.metadata -> 'message_ids' ELSE '[]'::jsonb END
                  ) AS source(id)
                  WHERE source.id NOT IN (SELECT unnest(:derived))
              )
            RETURNING d.id
            """
        ).bindparams(bindparam("collections", type_=ARRAY(Text)), bindparam("derived", type_=ARRAY(Text))),
        {"collections": list(collection_ids), "derived": list(message_ids)},
    )
    return [row[0] for row in result]
