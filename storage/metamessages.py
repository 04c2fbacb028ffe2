"""Metamessages: labelled side data about a user, optionally tied to one of its sessions and messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError
from storage.ids import new_id
from storage.messages import get_message
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_one,
    record_columns,
    row_keys,
    update_one,
)
from storage.sessions import get_session
from storage.tables import Metamessage
from storage.users import get_user
from storage.validation import (
    LABEL_MAX,
    MESSAGE_CONTENT_MAX,
    check_id,
    check_metadata,
    check_name,
    check_text,
)


def _where(app_id: str, user_id: str, metamessage_id: str) -> Keys:
    return row_keys("metamessage", metamessage_id, user_id=user_id, app_id=app_id)


async def _check_links(
    db: AsyncConnection, app_id: str, user_id: str, session_id: str | None, message_id: str | None
) -> None:
    """The session must be this user's, and the message must be in that session."""
    if message_id is not None and session_id is None:
        raise InvalidError(
            "a metamessage linked to a message must also name that message's session_id",
            field=("session_id",),
        )
    if message_id is not None and session_id is not None:
        await get_message(db, app_id, user_id, session_id, message_id)
    elif session_id is not None:
        await get_session(db, app_id, user_id, session_id)


async def create_metamessage(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    *,
    label: str,
    content: str,
    session_id: str | None = None,
    message_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    values = {
        "id": new_id(),
        "app_id": app_id,
        "user_id": user_id,
        "session_id": session_id,
        "message_id": message_id,
        "label": check_name(label, what="metamessage_type", max_length=LABEL_MAX),
        "content": check_text(content, max_length=MESSAGE_CONTENT_MAX),
        "metadata_": check_metadata(metadata),
    }
    await get_user(db, app_id, user_id)
    await _check_links(db, app_id, user_id, session_id, message_id)
    return await insert_one(db, Metamessage, values)


async def get_metamessage(db: AsyncConnection, app_id: str, user_id: str, metamessage_id: str) -> Record:
    return await fetch_one(
        db, Metamessage, _where(app_id, user_id, metamessage_id), f"metamessage {metamessage_id!r}"
    )


async def update_metamessage(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    metamessage_id: str,
    *,
    label: str | None = None,
    session_id: str | None = None,
    message_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Record:
    """Change the given fields; links are re-checked. A message_id alone stays in the current session."""
    where = _where(app_id, user_id, metamessage_id)
    values: dict[str, Any] = {}
    if label is not None:
        values["label"] = check_name(label, what="metamessage_type", max_length=LABEL_MAX)
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    if session_id is not None or message_id is not None:
        current = await fetch_one(db, Metamessage, where, f"metamessage {metamessage_id!r}")
        new_session = session_id if session_id is not None else current.session_id
        # Moving to another session drops a message link that would point outside it.
        keeps_message = session_id is None or session_id == current.session_id
        new_message = (
            message_id if message_id is not None else (current.message_id if keeps_message else None)
        )
        await _check_links(db, app_id, user_id, new_session, new_message)
        values["session_id"], values["message_id"] = new_session, new_message
    return await update_one(db, Metamessage, where, values, f"metamessage {metamessage_id!r}")


async def list_metamessages(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    *,
    label: str | None = None,
    session_id: str | None = None,
    message_id: str | None = None,
    filter: dict[str, Any] | None = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    await get_user(db, app_id, user_id)
    keys: Keys = {"user_id": user_id, "app_id": app_id}
    for column, value in (("session_id", session_id), ("message_id", message_id)):
        if value is not None:
            keys[column] = check_id(value, what=column.removesuffix("_id"))
    if label is not None:
        keys["label"] = check_name(label, what="metamessage_type", max_length=LABEL_MAX)
    return await fetch_page(db, Metamessage, keys, filter=filter, reverse=reverse, page=page, size=size)


async def latest_summary(
    db: AsyncConnection, session_id: str, label: str, *, covering_at_most: int
) -> Record | None:
    """The session's newest metamessage with ``label`` whose ``metadata.message_count`` is at most
    ``covering_at_most`` (a summary of messages that come later is never used)."""
    count = Metamessage.metadata_["message_count"].as_integer()
    query = (
        select(*record_columns(Metamessage))
        .where(Metamessage.session_id == session_id, Metamessage.label == label, count <= covering_at_most)
        .order_by(count.desc(), Metamessage.seq.desc())
        .limit(1)
    )
    return (await db.execute(query)).first()


async def latest_by_label(
    db: AsyncConnection, user_id: str | None, labels: Sequence[str], *, session_id: str | None = None
) -> list[Record]:
    """The newest metamessage of each label (of one session, or of any of the user's), in ``labels``'
    order; labels with none are left out. ``user_id`` None: whoever's they are (a v3 session's
    summaries are stored under the senders of the messages they end at)."""
    found = []
    for label in labels:
        query = select(*record_columns(Metamessage)).where(Metamessage.label == label)
        if user_id is not None:
            query = query.where(Metamessage.user_id == user_id)
        if session_id is not None:
            query = query.where(Metamessage.session_id == session_id)
        row = (await db.execute(query.order_by(Metamessage.seq.desc()).limit(1))).first()
        if row is not None:
            found.append(row)
    return found


async def summaries_of_user(db: AsyncConnection, user_id: str, label: str) -> list[Record]:
    """Every summary (``label``) of the user's sessions, oldest first: ``session_id``, ``content`` and
    ``covers``, how many of the session's messages it covers."""
    covers = Metamessage.metadata_["message_count"].as_integer().label("covers")
    query = (
        select(Metamessage.session_id, Metamessage.content, covers)
        .where(Metamessage.user_id == user_id, Metamessage.label == label)
        .order_by(Metamessage.seq)
    )
    return list((await db.execute(query)).all())
