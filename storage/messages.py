"""Messages in a session, kept in the order they were written."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_many,
    insert_under_parent,
    row_keys,
    update_one,
)
from storage.sessions import get_session
from storage.tables import Message, Session
from storage.validation import MESSAGE_CONTENT_MAX, check_ids, check_metadata, check_text

BATCH_MAX = 100


def _row(
    app_id: str, user_id: str, session_id: str, content: Any, is_user: Any, metadata: Any
) -> dict[str, Any]:
    if not isinstance(is_user, bool):
        raise InvalidError(f"is_user must be true or false, got {is_user!r}")
    return {
        "id": new_id(),
        "app_id": app_id,
        "user_id": user_id,
        "session_id": session_id,
        "is_user": is_user,
        "content": check_text(content, max_length=MESSAGE_CONTENT_MAX),
        "metadata_": check_metadata(metadata),
    }


def _where(app_id: str, user_id: str, session_id: str, message_id: str) -> Keys:
    return row_keys("message", message_id, session_id=session_id, user_id=user_id, app_id=app_id)


async def create_message(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    session_id: str,
    *,
    content: str,
    is_user: bool,
    metadata: dict[str, Any] | None = None,
) -> Record:
    check_ids(app=app_id, user=user_id, session=session_id)
    return await insert_under_parent(
        db,
        Message,
        _row(app_id, user_id, session_id, content, is_user, metadata),
        Session,
        {"id": session_id, "user_id": user_id, "app_id": app_id},
        f"session {session_id!r}",
    )


async def create_messages(
    db: AsyncConnection, app_id: str, user_id: str, session_id: str, messages: list[dict[str, Any]]
) -> list[Record]:
    """Up to 100 messages at once, stored and returned in the given order."""
    if not 1 <= len(messages) <= BATCH_MAX:
        raise InvalidError(f"a batch holds 1 to {BATCH_MAX} messages, got {len(messages)}")
    rows = [
        _row(app_id, user_id, session_id, m.get("content"), m.get("is_user"), m.get("metadata"))
        for m in messages
    ]
    await get_session(db, app_id, user_id, session_id)
    return await insert_many(db, Message, rows)


async def get_message(
    db: AsyncConnection, app_id: str, user_id: str, session_id: str, message_id: str
) -> Record:
    return await fetch_one(
        db, Message, _where(app_id, user_id, session_id, message_id), f"message {message_id!r}"
    )


async def update_message(
    db: AsyncConnection, app_id: str, user_id: str, session_id: str, message_id: str, metadata: dict[str, Any]
) -> Record:
    return await update_one(
        db,
        Message,
        _where(app_id, user_id, session_id, message_id),
        {"metadata_": check_metadata(metadata)},
        f"message {message_id!r}",
    )


async def list_messages(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    session_id: str,
    *,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    await get_session(db, app_id, user_id, session_id)
    where = {"session_id": session_id}
    return await fetch_page(db, Message, where, filter=filter, reverse=reverse, page=page, size=size)
