"""Sessions of a user. Deleting one only marks it inactive; its messages stay readable."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError, NotFoundError
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_one,
    insert_under_parent,
    row_keys,
    update_one,
)
from storage.tables import Message, Session, User
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


# Most messages one clone copies, and most metamessages with deep_copy. The copy itself is one statement
# inside PostgreSQL (5,000 messages in 0.12-0.28 s on 2 cores, where passing them through Python took
# 1-3.5 s), but the index sync then embeds every copy, in the background and in turn with every other
# app's new messages: a clone may cost as much as 50 full message batches (messages.BATCH_MAX), no more.
CLONE_MAX = 5_000

_NO_CUTOFF = 2**63 - 1  # above every seq: the whole session

# The first :count messages of the source session up to :through, each paired with its copy's id (from
# :message_ids, in order), then copied in order. Two statements share this start: the clone's messages
# alone, or (deep_copy) with its metamessages re-pointed at the copies.
_PAIRS = """
    WITH originals AS (
        SELECT id, seq, row_number() OVER (ORDER BY seq) AS n FROM messages
        WHERE session_id = :source AND seq <= :through
        ORDER BY seq LIMIT :count
    ),
    pairs AS (
        SELECT o.id AS old_id, fresh.id AS new_id, o.seq
        FROM originals o
        JOIN unnest(CAST(:message_ids AS text[])) WITH ORDINALITY AS fresh(id, n) ON fresh.n = o.n
    )
"""
_INSERT_COPIES = """
    INSERT INTO messages (id, app_id, user_id, session_id, is_user, content, metadata)
    SELECT p.new_id, m.app_id, m.user_id, :clone, m.is_user, m.content, m.metadata
    FROM pairs p JOIN messages m ON m.id = p.old_id
    ORDER BY p.seq
"""
_COPY_MESSAGES = text(_PAIRS + _INSERT_COPIES)
# The copied metamessages: the session's own, and those on a copied message (by the session's order,
# each with an id from :meta_ids). Their message ids point at copies inserted by the same statement,
# which the foreign key accepts: it is checked when the statement ends.
_COPY_WITH_METAMESSAGES = text(
    _PAIRS
    + f"""
    , copies AS ({_INSERT_COPIES} RETURNING id),
    metas AS (
        SELECT mm.id, mm.seq, p.new_id AS message_id, row_number() OVER (ORDER BY mm.seq) AS n
        FROM metamessages mm LEFT JOIN pairs p ON p.old_id = mm.message_id
        WHERE mm.session_id = :source AND (mm.message_id IS NULL OR p.new_id IS NOT NULL)
        ORDER BY mm.seq LIMIT :meta_count
    )
    INSERT INTO metamessages (id, app_id, user_id, session_id, message_id, label, content, metadata)
    SELECT fresh.id, mm.app_id, mm.user_id, :clone, metas.message_id, mm.label, mm.content, mm.metadata
    FROM metas
    JOIN unnest(CAST(:meta_ids AS text[])) WITH ORDINALITY AS fresh(id, n) ON fresh.n = metas.n
    JOIN metamessages mm ON mm.id = metas.id
    ORDER BY metas.seq
    """
)
# How many rows a clone would copy, counted no further than one past the cap.
_COUNT_MESSAGES = text(
    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE session_id = :source AND seq <= :through "
    "LIMIT :stop) AS m"
)
_COUNT_METAMESSAGES = text(
    """
    SELECT count(*) FROM (
        SELECT 1 FROM metamessages mm
        WHERE mm.session_id = :source AND (mm.message_id IS NULL OR mm.message_id IN (
            SELECT id FROM messages WHERE session_id = :source AND seq <= :through
        ))
        LIMIT :stop
    ) AS m
    """
)


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

    Copies at most ``CLONE_MAX`` messages (and metamessages), else InvalidError, in one statement
    inside PostgreSQL. The messages' insert trigger (migration 0003) writes the copies' index outbox
    entries, so the index sync embeds them in the background; they are not queued for derivation again.
    """
    original = await get_session(db, app_id, user_id, session_id)
    through = _NO_CUTOFF
    if message_id is not None:
        check_id(message_id, what="message")
        cutoff = (
            await db.execute(
                select(Message.seq).where(Message.id == message_id, Message.session_id == session_id)
            )
        ).scalar()
        if cutoff is None:
            raise NotFoundError(f"message {message_id!r} not found in session {session_id!r}")
        through = cutoff
    scope = {"source": session_id, "through": through, "stop": CLONE_MAX + 1}
    count = (await db.execute(_COUNT_MESSAGES, scope)).scalar_one()
    if count > CLONE_MAX:
        upto = f" up to message {message_id!r}" if message_id is not None else ""
        raise InvalidError(
            f"session {session_id!r} has more than {CLONE_MAX} messages{upto}, and a clone copies at "
            f"most {CLONE_MAX}: pass as message_id the id of its {CLONE_MAX}th message or an earlier one",
            field=("message_id",),
        )
    meta_count = (await db.execute(_COUNT_METAMESSAGES, scope)).scalar_one() if deep_copy else 0
    if meta_count > CLONE_MAX:
        raise InvalidError(
            f"session {session_id!r} has more than {CLONE_MAX} metamessages to copy, and a clone copies "
            f"at most {CLONE_MAX}: clone without deep_copy, or up to an earlier message (message_id)",
            field=("deep_copy",),
        )

    clone = await insert_one(
        db, Session, {"id": new_id(), "app_id": app_id, "user_id": user_id, "metadata_": original.metadata_}
    )
    if count or meta_count:
        params = {
            "source": session_id,
            "through": through,
            "count": count,
            "message_ids": [new_id() for _ in range(count)],
            "clone": clone.id,
            "meta_count": meta_count,
            "meta_ids": [new_id() for _ in range(meta_count)],
        }
        # The copies carry what their originals said, already derived: the derivation queue's trigger
        # skips statements made while this transaction-local setting is on.
        await db.execute(text("SET LOCAL rapport.copying_messages = 'on'"))
        await db.execute(_COPY_WITH_METAMESSAGES if meta_count else _COPY_MESSAGES, params)
        await db.execute(text("SET LOCAL rapport.copying_messages = 'off'"))
    return clone
