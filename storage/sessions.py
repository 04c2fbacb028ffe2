"""Sessions of a user. Deleting one only marks it inactive; its messages stay readable."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import NotFoundError
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_many,
    insert_one,
    insert_under_parent,
    record_columns,
    row_keys,
    update_one,
)
from storage.tables import Message, Metamessage, Session, User
from storage.users import get_user
from storage.validation import check_id, check_ids, check_metadata


def _where(app_id: str, user_id: str, session_id: str) -> Keys:
    return row_keys("session", session_id, user_id=user_id, app_id=app_id)


async def create_session(
    db: AsyncConnection, app_id: str, user_id: str, metadata: dict[str, Any] | None = None
) -> Record:
    check_ids(app=app_id, user=user_id)
    return await insert_under_parent(
        db,
        Session,
        {"id": new_id(), "app_id": app_id, "user_id": user_id, "metadata_": check_metadata(metadata)},
        User,
        {"id": user_id, "app_id": app_id},
        f"user {user_id!r}",
    )


async def get_session(db: AsyncConnection, app_id: str, user_id: str, session_id: str) -> Record:
    """The session, active or not, if it belongs to this user of this app."""
    return await fetch_one(db, Session, _where(app_id, user_id, session_id), f"session {session_id!r}")


async def update_session(
    db: AsyncConnection, app_id: str, user_id: str, session_id: str, metadata: dict[str, Any]
) -> Record:
    values = {"metadata_": check_metadata(metadata)}
    return await update_one(
        db, Session, _where(app_id, user_id, session_id), values, f"session {session_id!r}"
    )


async def delete_session(db: AsyncConnection, app_id: str, user_id: str, session_id: str) -> Record:
    """Soft delete: the session is marked inactive and keeps its messages."""
    values = {"is_active": False}
    return await update_one(
        db, Session, _where(app_id, user_id, session_id), values, f"session {session_id!r}"
    )


async def list_sessions(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    *,
    is_active: bool = False,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """The user's sessions; ``is_active=True`` keeps only active ones (False lists all, as in Honcho)."""
    await get_user(db, app_id, user_id)
    keys: Keys = {"user_id": user_id, "app_id": app_id}
    if is_active:
        keys["is_active"] = True
    return await fetch_page(db, Session, keys, filter=filter, reverse=reverse, page=page, size=size)


async def clone_session(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    session_id: str,
    *,
    message_id: str | None = None,
    deep_copy: bool = False,
) -> Record:
    """A new active session with the original's metadata and a copy of its messages, in order.

    ``message_id`` cuts the copy off after that message (inclusive). ``deep_copy`` also copies the
    metamessages attached to the session, re-pointed at the new session and the copied messages.
    """
    original = await get_session(db, app_id, user_id, session_id)
    messages = select(*record_columns(Message)).where(Message.session_id == session_id).order_by(Message.seq)
    if message_id is not None:
        check_id(message_id, what="message")
        cutoff = (
            await db.execute(
                select(Message.seq).where(Message.id == message_id, Message.session_id == session_id)
            )
        ).scalar()
        if cutoff is None:
            raise NotFoundError(f"message {message_id!r} not found in session {session_id!r}")
        messages = messages.where(Message.seq <= cutoff)

    clone = await insert_one(
        db, Session, {"id": new_id(), "app_id": app_id, "user_id": user_id, "metadata_": original.metadata_}
    )

    new_ids: dict[str, str] = {}
    rows = []
    for message in (await db.execute(messages)).all():
        new_ids[message.id] = new_id()
        rows.append(
            {
                "id": new_ids[message.id],
                "app_id": app_id,
                "user_id": user_id,
                "session_id": clone.id,
                "is_user": message.is_user,
                "content": message.content,
                "metadata_": message.metadata_,
            }
        )
    # The copies carry what their originals said, already derived: they are not queued for derivation
    # again (the queue's trigger skips statements made while this transaction-local setting is on).
    await db.execute(text("SET LOCAL rapport.copying_messages = 'on'"))
    await insert_many(db, Message, rows)
    await db.execute(text("SET LOCAL rapport.copying_messages = 'off'"))

    if deep_copy:
        metas = (
            await db.execute(
                select(*record_columns(Metamessage))
                .where(Metamessage.session_id == session_id)
                .order_by(Metamessage.seq)
            )
        ).all()
        meta_rows = [
            {
                "id": new_id(),
                "app_id": meta.app_id,
                "user_id": meta.user_id,
                "session_id": clone.id,
                "message_id": new_ids[meta.message_id] if meta.message_id else None,
                "label": meta.label,
                "content": meta.content,
                "metadata_": meta.metadata_,
            }
            for meta in metas
            if meta.message_id is None or meta.message_id in new_ids
        ]
        await insert_many(db, Metamessage, meta_rows)
    return clone
