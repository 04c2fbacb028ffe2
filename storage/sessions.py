"""Sessions: a v1 user's (deleting one through v1 only marks it inactive; its messages stay readable), and
v3's, named in their workspace, with members (peers that join and leave, each with its configuration).
A v1 session's members are its user and the app's assistant peer; deleting a session through v3 deletes
it and everything in it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, join, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import InvalidError, NotFoundError
from storage.filters import conditions_of
from storage.ids import new_id
from storage.query import (
    Keys,
    Page,
    Record,
    fetch_one,
    fetch_or_create,
    fetch_page,
    insert_one,
    insert_under_parent,
    page_of,
    record_columns,
    row_keys,
    update_one,
)
from storage.tables import Message, Session, SessionPeer, User
from storage.users import get_user
from storage.validation import check_id, check_ids, check_metadata, check_name_findable
from storage.workspaces import (
    DEFAULT_ASSISTANT,
    assistant_peer_id,
    check_configuration,
    check_v3_name,
    peer,
    peers_by_name,
)

_ADD_MEMBERS = text(
    "INSERT INTO session_peers (session_id, peer_id, app_id) VALUES (:session_id, :peer_id, :app_id) "
    "ON CONFLICT DO NOTHING"
)


def _where(app_id: str, user_id: str, session_id: str) -> Keys:
    return row_keys("session", session_id, user_id=user_id, app_id=app_id)


async def create_session(
    db: AsyncConnection,
    app_id: str,
    user_id: str,
    metadata: dict[str, Any] | None = None,
    *,
    assistant: str = DEFAULT_ASSISTANT,
) -> Record:
    """A v1 session of the user: its name is its id, and its members (for v3) are the user and the
    app's ``assistant`` peer."""
    check_ids(app=app_id, user=user_id)
    session_id = new_id()
    values = {
        "id": session_id,
        "name": session_id,
        "app_id": app_id,
        "user_id": user_id,
        "metadata_": check_metadata(metadata),
    }
    row = await insert_under_parent(
        db, Session, values, User, {"id": user_id, "app_id": app_id}, f"user {user_id!r}"
    )
    members = [user_id, await assistant_peer_id(db, app_id, assistant)]
    await db.execute(
        _ADD_MEMBERS,
        [{"session_id": session_id, "peer_id": p, "app_id": app_id} for p in dict.fromkeys(members)],
    )
    return row


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
    INSERT INTO messages (id, app_id, user_id, session_id, peer_id, is_user, content, metadata)
    SELECT p.new_id, m.app_id, m.user_id, :clone, m.peer_id, m.is_user, m.content, m.metadata
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
    return await copy_session(db, original, message_id=message_id, deep_copy=deep_copy)


_COPY_MEMBERS = text(
    """
    INSERT INTO session_peers (session_id, peer_id, app_id, observe_me, observe_others)
    SELECT :clone, peer_id, app_id, observe_me, observe_others FROM session_peers
    WHERE session_id = :source AND left_at IS NULL ORDER BY seq
    """
)


async def copy_session(
    db: AsyncConnection, original: Record, *, message_id: str | None = None, deep_copy: bool = False
) -> Record:
    """``clone_session`` of a session row (v1 or v3): the copy has a new id, which is also its name, the
    original's owner, metadata and configuration, and its present members."""
    session_id = original.id
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

    clone_id = new_id()
    clone = await insert_one(
        db,
        Session,
        {
            "id": clone_id,
            "name": clone_id,
            "app_id": original.app_id,
            "user_id": original.user_id,
            "metadata_": original.metadata_,
            "configuration": original.configuration,
        },
    )
    await db.execute(_COPY_MEMBERS, {"clone": clone.id, "source": session_id})
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


# --- v3: sessions by name, and their members -----------------------------------------------------------

PeerConfig = tuple[bool | None, bool | None]  # (observe_me, observe_others) as given; None: not said


async def named_session(db: AsyncConnection, app_id: str, name: str, *, active: bool = True) -> Record:
    """The session named ``name`` in the app (a v1 session's name is its id); with ``active``, one that
    is deleted reads as not found."""
    check_name_findable(name, what="session")
    row = await fetch_one(db, Session, {"app_id": app_id, "name": name}, f"session {name!r}")
    if active and not row.is_active:
        raise NotFoundError(f"session {name!r} not found")
    return row


async def get_or_create_named_session(
    db: AsyncConnection,
    app_id: str,
    name: str,
    *,
    metadata: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
    peers: dict[str, PeerConfig] | None = None,
    field: tuple[str | int, ...] = ("id",),
) -> tuple[Record, bool]:
    """The session, created if missing, and whether it was. Given metadata replaces an existing
    session's, configuration is merged into it key by key, and ``peers`` join it (see ``add_members``).
    A deleted session is not found: its name is not free until it is gone."""
    check_v3_name(name, field=field, what="session")
    values: dict[str, Any] = {
        "id": new_id(),
        "app_id": app_id,
        "name": name,
        "metadata_": check_metadata(metadata or {}),
        "configuration": check_configuration(configuration),
    }
    row, created = await fetch_or_create(db, Session, values, ("app_id", "name"), f"session {name!r}")
    if not row.is_active:
        raise NotFoundError(f"session {name!r} not found")
    if not created:
        changes: dict[str, Any] = {}
        if metadata is not None:
            changes["metadata_"] = values["metadata_"]
        if configuration is not None:
            changes["configuration"] = {**dict(row.configuration), **values["configuration"]}
        if changes:
            row = await update_one(db, Session, {"id": row.id}, changes, f"session {name!r}")
    if peers:
        await add_members(db, row, peers)
    return row, created


# A peer joins: a new member with its configuration, or one that had left comes back with the new one;
# one still present keeps its configuration. Either way it joined now (as in Honcho).
_JOIN = text(
    """
    INSERT INTO session_peers AS sp (session_id, peer_id, app_id, observe_me, observe_others)
    VALUES (:session_id, :peer_id, :app_id, :observe_me, :observe_others)
    ON CONFLICT (session_id, peer_id) DO UPDATE SET
        joined_at = now(),
        left_at = NULL,
        observe_me = CASE WHEN sp.left_at IS NULL THEN sp.observe_me ELSE EXCLUDED.observe_me END,
        observe_others = CASE WHEN sp.left_at IS NULL THEN sp.observe_others ELSE EXCLUDED.observe_others END
    """
)
_LEAVE = text(
    "UPDATE session_peers SET left_at = now() "
    "WHERE session_id = :session_id AND left_at IS NULL AND peer_id = ANY(CAST(:peer_ids AS text[]))"
)
_LEAVE_ALL = text(
    "UPDATE session_peers SET left_at = now() WHERE session_id = :session_id AND left_at IS NULL"
)
OBSERVERS_MAX = 10  # peers of one session with observe_others (Honcho's SESSION_OBSERVERS_LIMIT)


async def add_members(db: AsyncConnection, session: Record, peers: dict[str, PeerConfig]) -> None:
    """The named peers (created if missing) join the session."""
    if not peers:
        return
    rows = await peers_by_name(db, session.app_id, list(peers))
    params = [
        {
            "session_id": session.id,
            "peer_id": rows[name].id,
            "app_id": session.app_id,
            "observe_me": config[0],
            "observe_others": config[1],
        }
        for name, config in peers.items()
    ]
    await db.execute(_JOIN, params)
    await _check_observers(db, session)


async def set_members(db: AsyncConnection, session: Record, peers: dict[str, PeerConfig]) -> None:
    """The named peers become the session's members: the others leave, these (re)join with this
    configuration."""
    await db.execute(_LEAVE_ALL, {"session_id": session.id})
    await add_members(db, session, peers)


async def remove_members(db: AsyncConnection, session: Record, names: Sequence[str]) -> None:
    """The named peers leave the session (names of peers that are not members are ignored)."""
    if not names:
        return
    ids = (
        (await db.execute(select(User.id).where(User.app_id == session.app_id, User.name.in_(list(names)))))
        .scalars()
        .all()
    )
    await db.execute(_LEAVE, {"session_id": session.id, "peer_ids": list(ids)})


async def _check_observers(db: AsyncConnection, session: Record) -> None:
    observers = (
        await db.execute(
            select(func.count())
            .select_from(SessionPeer)
            .where(
                SessionPeer.session_id == session.id,
                SessionPeer.left_at.is_(None),
                SessionPeer.observe_others.is_(True),
            )
        )
    ).scalar_one()
    if observers > OBSERVERS_MAX:
        raise InvalidError(
            f"a session has at most {OBSERVERS_MAX} peers with observe_others; this would have {observers}",
            field=("peers",),
        )


async def list_members(
    db: AsyncConnection, session_id: str, *, page: int = 1, size: int = 50
) -> Page[Record]:
    """The session's present members (peers that have not left), in the order they first joined."""
    where = [SessionPeer.session_id == session_id, SessionPeer.left_at.is_(None)]
    source = join(User, SessionPeer, SessionPeer.peer_id == User.id)
    return await page_of(db, User, where, page=page, size=size, select_from=source, order_by=SessionPeer.seq)


async def member(db: AsyncConnection, session: Record, peer_name: str) -> Record:
    """A peer's membership of the session (present or past), or NotFoundError."""
    row = (
        await db.execute(
            select(*record_columns(SessionPeer))
            .join(User, User.id == SessionPeer.peer_id)
            .where(
                SessionPeer.session_id == session.id, User.app_id == session.app_id, User.name == peer_name
            )
        )
    ).first()
    if row is None:
        raise NotFoundError(f"peer {peer_name!r} is not a member of session {session.name!r}")
    return row


async def set_member_config(db: AsyncConnection, session: Record, peer_name: str, config: PeerConfig) -> None:
    """Change what was given of a peer's configuration in the session; a peer that was never a member
    joins with it. The peer must exist."""
    peer_row = await peer(db, session.app_id, peer_name)
    await db.execute(
        text(
            """
            INSERT INTO session_peers AS sp (session_id, peer_id, app_id, observe_me, observe_others)
            VALUES (:session_id, :peer_id, :app_id, :observe_me, :observe_others)
            ON CONFLICT (session_id, peer_id) DO UPDATE SET
                observe_me = coalesce(EXCLUDED.observe_me, sp.observe_me),
                observe_others = coalesce(EXCLUDED.observe_others, sp.observe_others)
            """
        ),
        {
            "session_id": session.id,
            "peer_id": peer_row.id,
            "app_id": session.app_id,
            "observe_me": config[0],
            "observe_others": config[1],
        },
    )
    await _check_observers(db, session)


async def list_named_sessions(
    db: AsyncConnection,
    app_id: str,
    workspace_name: str,
    *,
    filters: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """The workspace's active sessions, v1 and v3 alike."""
    where = [
        Session.app_id == app_id,
        Session.is_active,
        *conditions_of(filters, _session_fields(workspace_name), metadata=Session.metadata_),
    ]
    return await page_of(db, Session, where, reverse=reverse, page=page, size=size)


async def sessions_of_peer(
    db: AsyncConnection,
    app_id: str,
    workspace_name: str,
    peer_name: str,
    *,
    filters: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """Every session the peer is or was a member of."""
    peer_row = await peer(db, app_id, peer_name)
    member_of = select(SessionPeer.session_id).where(SessionPeer.peer_id == peer_row.id)
    where = [
        Session.app_id == app_id,
        Session.id.in_(member_of),
        *conditions_of(filters, _session_fields(workspace_name), metadata=Session.metadata_),
    ]
    return await page_of(db, Session, where, reverse=reverse, page=page, size=size)


def _session_fields(workspace_name: str) -> dict[str, Any]:
    return {
        "id": Session.name,
        "created_at": Session.created_at,
        "is_active": Session.is_active,
        "workspace_id": literal(workspace_name),
    }


async def update_named_session(
    db: AsyncConnection,
    app_id: str,
    name: str,
    *,
    metadata: dict[str, Any] | None,
    configuration: dict[str, Any] | None,
) -> Record:
    """New metadata replaces the old, configuration is merged key by key; a missing session is created."""
    row, _ = await get_or_create_named_session(
        db, app_id, name, metadata=metadata, configuration=configuration
    )
    return row


async def delete_named_session(db: AsyncConnection, app_id: str, name: str) -> tuple[Record, list[str]]:
    """Delete the session and everything in it (messages, their derivation work, metamessages, members,
    the conclusions drawn from it); returns it and the ids of those conclusions. The caller takes its
    messages (by ``session_id``) and those documents out of the search index."""
    row = await named_session(db, app_id, name)
    await db.execute(text("SELECT id FROM sessions WHERE id = :s FOR UPDATE"), {"s": row.id})
    await db.execute(text("DELETE FROM derivation_queue WHERE session_id = :s"), {"s": row.id})
    drawn = await db.execute(text("DELETE FROM documents WHERE session_id = :s RETURNING id"), {"s": row.id})
    await db.execute(text("DELETE FROM sessions WHERE id = :s"), {"s": row.id})
    return row, [r.id for r in drawn]
