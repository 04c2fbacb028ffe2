"""Messages in a session, kept in the order they were written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.util import ClauseAdapter

from storage.errors import InvalidError, translate_integrity_errors
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_page,
    insert_many,
    insert_under_parent,
    record_columns,
    row_keys,
    update_one,
)
from storage.sessions import get_or_create_named_session, get_session
from storage.tables import Message, Session
from storage.validation import (
    MESSAGE_CONTENT_MAX,
    check_filter,
    check_ids,
    check_metadata,
    check_name_findable,
    check_text,
)
from storage.workspaces import (
    DEFAULT_ASSISTANT,
    assistant_peer_id,
    check_v3_name,
    get_or_create_workspace,
    peers_by_name,
)

BATCH_MAX = 100


def _row(
    app_id: str,
    user_id: str,
    session_id: str,
    content: Any,
    is_user: Any,
    metadata: Any,
    *,
    peer_id: str | None = None,
    max_length: int = MESSAGE_CONTENT_MAX,
) -> dict[str, Any]:
    if not isinstance(is_user, bool):
        raise InvalidError(f"is_user must be true or false, got {is_user!r}", field=("is_user",))
    return {
        "id": new_id(),
        "app_id": app_id,
        "user_id": user_id,
        "session_id": session_id,
        "peer_id": peer_id if peer_id is not None else user_id,
        "is_user": is_user,
        "content": check_text(content, max_length=max_length),
        "metadata_": check_metadata(metadata),
    }


def adapt(condition: Any, alias: Any) -> Any:
    """A condition written on the messages table, made to read ``alias`` of it instead."""
    return ClauseAdapter(alias).traverse(condition)


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
    assistant: str = DEFAULT_ASSISTANT,
) -> Record:
    """A v1 message: the user's (``is_user``), else the app's ``assistant`` peer's."""
    check_ids(app=app_id, user=user_id, session=session_id)
    row = _row(app_id, user_id, session_id, content, is_user, metadata)
    if not is_user:
        await get_session(db, app_id, user_id, session_id)
        row["peer_id"] = await assistant_peer_id(db, app_id, assistant)
    return await insert_under_parent(
        db,
        Message,
        row,
        Session,
        {"id": session_id, "user_id": user_id, "app_id": app_id},
        f"session {session_id!r}",
    )


async def create_messages(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    session_id: str,
    messages: list[dict[str, Any]],
    *,
    assistant: str = DEFAULT_ASSISTANT,
) -> list[Record]:
    """Up to 100 messages at once, stored and returned in the given order."""
    if not 1 <= len(messages) <= BATCH_MAX:
        raise InvalidError(
            f"a batch holds 1 to {BATCH_MAX} messages, got {len(messages)}", field=("messages",)
        )
    rows = []
    for i, m in enumerate(messages):
        try:
            rows.append(
                _row(app_id, user_id, session_id, m.get("content"), m.get("is_user"), m.get("metadata"))
            )
        except InvalidError as exc:
            raise exc.within("messages", i) from exc
    await get_session(db, app_id, user_id, session_id)
    if not all(row["is_user"] for row in rows):
        assistant_id = await assistant_peer_id(db, app_id, assistant)
        for row in rows:
            if not row["is_user"]:
                row["peer_id"] = assistant_id
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


async def fetch_with_neighbours(
    db: AsyncConnection,
    ids: Sequence[str],
    *,
    app_id: str,
    user_id: str | None,
    session_id: str | None = None,
    filter: dict[str, Any] | None = None,
    conditions: Sequence[Any] = (),
) -> dict[str, tuple[Record, str | None, str | None]]:
    """The messages among ``ids`` in this scope (of a user, or of the whole app with ``user_id`` None)
    matching ``filter`` and ``conditions`` (on the messages table), each with the ids of the messages
    just before and after it in its session."""
    if not ids:
        return {}
    check_ids(
        app=app_id,
        **({"user": user_id} if user_id else {}),
        **({"session": session_id} if session_id else {}),
    )
    m = Message.__table__.alias("m")
    before = Message.__table__.alias("before")
    after = Message.__table__.alias("after")
    previous_id = (
        select(before.c.id)
        .where(before.c.session_id == m.c.session_id, before.c.seq < m.c.seq)
        .order_by(before.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    next_id = (
        select(after.c.id)
        .where(after.c.session_id == m.c.session_id, after.c.seq > m.c.seq)
        .order_by(after.c.seq)
        .limit(1)
        .scalar_subquery()
    )
    columns = [m.c[column.key].label(name) for name, column in Message.__mapper__.columns.items()]
    where = [m.c.id.in_(list(ids)), m.c.app_id == app_id]
    if user_id is not None:
        where.append(m.c.user_id == user_id)
    if session_id is not None:
        where.append(m.c.session_id == session_id)
    metadata_filter = check_filter(filter)
    if metadata_filter is not None:
        where.append(m.c.metadata.contains(metadata_filter))
    # The conditions name the messages table; here it is aliased "m".
    where += [adapt(condition, m) for condition in conditions]
    stmt = select(*columns, previous_id.label("previous_id"), next_id.label("next_id")).where(*where)
    found: dict[str, tuple[Record, str | None, str | None]] = {}
    for row in await db.execute(stmt):
        found[row.id] = (cast(Record, row), row.previous_id, row.next_id)
    return found


async def session_window(
    db: AsyncConnection,
    session_id: str,
    *,
    before_seq: int | None = None,
    through_seq: int | None = None,
    skip: int = 0,
    limit: int,
    newest: bool = False,
) -> list[Record]:
    """Messages of a session in order: those before ``before_seq`` and/or up to ``through_seq``; the
    ``limit`` newest of them with ``newest``, else the first after skipping ``skip``."""
    query = select(*record_columns(Message)).where(Message.session_id == session_id)
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    if through_seq is not None:
        query = query.where(Message.seq <= through_seq)
    if newest:
        rows = (await db.execute(query.order_by(Message.seq.desc()).limit(limit))).all()
        return list(reversed(rows))
    return list((await db.execute(query.order_by(Message.seq).offset(skip).limit(limit))).all())


async def count_before(db: AsyncConnection, session_id: str, seq: int) -> int:
    """How many messages of the session come before the one at ``seq``."""
    query = (
        select(func.count()).select_from(Message).where(Message.session_id == session_id, Message.seq < seq)
    )
    return int((await db.execute(query)).scalar_one())


async def of_session(db: AsyncConnection, session_id: str, ids: Sequence[str]) -> set[str]:
    """Which of these message ids belong to the session."""
    if not ids:
        return set()
    query = select(Message.id).where(Message.session_id == session_id, Message.id.in_(list(set(ids))))
    return {row.id for row in await db.execute(query)}


async def derivable_of_user(db: AsyncConnection, user_id: str) -> list[Record]:
    """The user's messages in the sessions whose metadata does not turn the deriver off
    (``deriver_disabled`` unset or false), by session, in order."""
    derivable = text(
        "messages.session_id IN (SELECT id FROM sessions WHERE user_id = :u AND "
        "coalesce(metadata -> 'deriver_disabled', 'null'::jsonb) IN ('null'::jsonb, 'false'::jsonb))"
    ).bindparams(u=user_id)
    query = (
        select(*record_columns(Message))
        .where(Message.user_id == user_id)
        .where(derivable)
        .order_by(Message.session_id, Message.seq)
    )
    return list((await db.execute(query)).all())


# --- v3: messages of peers in named sessions -----------------------------------------------------------

V3_CONTENT_MAX = 25_000  # Honcho v3's MAX_MESSAGE_SIZE


def _returning() -> str:
    return ", ".join(f"messages.{c.name} AS {attr}" for attr, c in Message.__mapper__.columns.items())


# The usual case in one statement: the workspace, the active session and every sender, a present member
# of it, are there; then the batch is stored in order (ids chosen beforehand). If any is missing, the
# guard stores nothing and the caller makes what is missing first.
_STORE_IF_ALL_THERE = text(
    f"""
    WITH given AS (
        SELECT * FROM unnest(
            CAST(:ids AS text[]), CAST(:names AS text[]), CAST(:contents AS text[]),
            CAST(:metadatas AS jsonb[]), CAST(:times AS timestamptz[])
        ) WITH ORDINALITY AS g(id, name, content, metadata, created_at, n)
    ),
    placed AS (
        SELECT g.*, a.id AS app_id, s.id AS session_id, s.user_id AS owner_id, u.id AS peer_id
        FROM given g
        JOIN apps a ON a.name = :workspace
        JOIN sessions s ON s.app_id = a.id AND s.name = :session AND s.is_active
        JOIN users u ON u.app_id = a.id AND u.name = g.name
        JOIN session_peers sp ON sp.session_id = s.id AND sp.peer_id = u.id AND sp.left_at IS NULL
    )
    INSERT INTO messages (id, app_id, user_id, session_id, peer_id, is_user, content, metadata, created_at)
    SELECT id, app_id, coalesce(owner_id, peer_id), session_id, peer_id, owner_id IS NULL OR owner_id = peer_id,
           content, metadata, coalesce(created_at, now())
    FROM placed WHERE (SELECT count(*) FROM placed) = :count
    ORDER BY n
    RETURNING {_returning()}
    """
)


# One message (the most common batch), with scalar parameters only: PostgreSQL then settles on one
# generic plan for the prepared statement, where the batch statement above is planned on every call
# (its arrays' lengths change the estimates), which cost a tenth of a v3 create.
_STORE_ONE_IF_THERE = text(
    f"""
    INSERT INTO messages (id, app_id, user_id, session_id, peer_id, is_user, content, metadata, created_at)
    SELECT :id, s.app_id, coalesce(s.user_id, u.id), s.id, u.id, s.user_id IS NULL OR s.user_id = u.id,
           :content, CAST(:metadata AS jsonb), coalesce(CAST(:created_at AS timestamptz), now())
    FROM apps a
    JOIN sessions s ON s.app_id = a.id AND s.name = :session AND s.is_active
    JOIN users u ON u.app_id = a.id AND u.name = :name
    JOIN session_peers sp ON sp.session_id = s.id AND sp.peer_id = u.id AND sp.left_at IS NULL
    WHERE a.name = :workspace
    RETURNING {_returning()}
    """
)


def _utc(moment: Any, field: tuple[str | int, ...]) -> datetime | None:
    """A message's time as UTC (PostgreSQL takes offsets of at most 15:59; Python up to a day)."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise InvalidError("created_at must be a time", field=field)
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidError(f"created_at {moment.isoformat()} is out of range", field=field) from exc


async def create_peer_messages(
    db: AsyncConnection, workspace: str, session: str, items: Sequence[dict[str, Any]]
) -> list[Record]:
    """Up to 100 messages, each from its ``peer_id`` (a peer name), in the named session, stored and
    returned in order. As in Honcho, the workspace, the session and the senders are
    made if missing, and a sender that is not a member joins the session. In a v1 session (one with an
    owner) the messages are the owner's memory, and ``is_user`` says whether the owner sent them."""
    if not 1 <= len(items) <= BATCH_MAX:
        raise InvalidError(f"a batch holds 1 to {BATCH_MAX} messages, got {len(items)}", field=("messages",))
    check_name_findable(workspace, what="workspace")
    check_name_findable(session, what="session")
    names, contents, metadatas, times = [], [], [], []
    for i, item in enumerate(items):
        names.append(check_v3_name(item.get("peer_id"), field=("messages", i, "peer_id"), what="peer"))
        try:
            contents.append(check_text(item.get("content"), max_length=V3_CONTENT_MAX))
            metadatas.append(check_metadata(item.get("metadata") or {}))
        except InvalidError as exc:
            raise exc.within("messages", i) from exc
        times.append(_utc(item.get("created_at"), ("messages", i, "created_at")))
    ids = [new_id() for _ in items]
    params = {
        "ids": ids,
        "names": names,
        "contents": contents,
        "metadatas": [json.dumps(m) for m in metadatas],
        "times": times,
        "workspace": workspace,
        "session": session,
        "count": len(items),
    }
    with translate_integrity_errors():
        if len(items) == 1:
            one = {
                "id": ids[0],
                "name": names[0],
                "content": contents[0],
                "metadata": json.dumps(metadatas[0]),
                "created_at": times[0],
                "workspace": workspace,
                "session": session,
            }
            stored = (await db.execute(_STORE_ONE_IF_THERE, one)).all()
        else:
            stored = (await db.execute(_STORE_IF_ALL_THERE, params)).all()
    if stored:
        order = {message_id: n for n, message_id in enumerate(ids)}
        return sorted((cast(Record, row) for row in stored), key=lambda row: order[row.id])
    # Something is missing: make it (once per new workspace, session or sender), then store the batch.
    app, _ = await get_or_create_workspace(db, workspace)
    target, _ = await get_or_create_named_session(
        db, app.id, session, peers={n: (None, None) for n in dict.fromkeys(names)}, field=("session_id",)
    )
    peers = await peers_by_name(db, app.id, names)
    owner = target.user_id
    now = datetime.now(UTC)
    rows = []
    for message_id, name, content, metadata, created_at in zip(
        ids, names, contents, metadatas, times, strict=True
    ):
        sender = peers[name].id
        rows.append(
            {
                "id": message_id,
                "app_id": app.id,
                "user_id": owner or sender,
                "session_id": target.id,
                "peer_id": sender,
                "is_user": owner is None or sender == owner,
                "content": content,
                "metadata_": metadata,
                "created_at": created_at or now,
            }
        )
    return await insert_many(db, Message, rows)
