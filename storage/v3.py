"""Honcho v3's operations, addressed as v3 addresses them: by the names of a workspace, its peers and its
sessions. Each resolves the names in the transaction it runs in and calls the storage function that
does the work (storage/workspaces.py, sessions.py, messages.py). A message read here carries the names
the v3 wire shows: ``peer_name`` (its sender) and ``session_name``.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import sessions
from storage.errors import NotFoundError
from storage.filters import compile_filters
from storage.query import Page, Record, page_of, record_columns, update_one
from storage.tables import App, Message, Session, User
from storage.validation import check_metadata
from storage.workspaces import (
    check_no_active_sessions,
    get_or_create_peer,
    get_or_create_workspace,
    list_peers,
    update_peer,
    workspace,
)

_SENDER = User.name.label("peer_name")


# --- peers --------------------------------------------------------------------------------------------


async def get_or_create_peer_in(
    db: AsyncConnection, ws: str, name: str, *, metadata: Any, configuration: Any
) -> tuple[Record, bool]:
    app, _ = await get_or_create_workspace(db, ws)
    return await get_or_create_peer(db, app.id, name, metadata=metadata, configuration=configuration)


async def update_peer_in(
    db: AsyncConnection, ws: str, name: str, *, metadata: Any, configuration: Any
) -> Record:
    app = await workspace(db, ws)
    return await update_peer(db, app.id, name, metadata=metadata, configuration=configuration)


async def list_peers_in(db: AsyncConnection, ws: str, **options: Any) -> Page[Record]:
    app = await workspace(db, ws)
    return await list_peers(db, app.id, ws, **options)


async def workspace_deletable(db: AsyncConnection, ws: str) -> Record:
    """The workspace, if it has no active session left (409 otherwise)."""
    app = await workspace(db, ws)
    await check_no_active_sessions(db, app.id, ws)
    return app


# --- sessions -----------------------------------------------------------------------------------------


async def get_or_create_session_in(
    db: AsyncConnection, ws: str, name: str, **options: Any
) -> tuple[Record, bool]:
    app, _ = await get_or_create_workspace(db, ws)
    return await sessions.get_or_create_named_session(db, app.id, name, **options)


async def session_in(db: AsyncConnection, ws: str, name: str) -> Record:
    app = await workspace(db, ws)
    return await sessions.named_session(db, app.id, name)


async def update_session_in(
    db: AsyncConnection, ws: str, name: str, *, metadata: Any, configuration: Any
) -> Record:
    app = await workspace(db, ws)
    return await sessions.update_named_session(
        db, app.id, name, metadata=metadata, configuration=configuration
    )


async def list_sessions_in(db: AsyncConnection, ws: str, **options: Any) -> Page[Record]:
    app = await workspace(db, ws)
    return await sessions.list_named_sessions(db, app.id, ws, **options)


async def sessions_of_peer_in(db: AsyncConnection, ws: str, peer_name: str, **options: Any) -> Page[Record]:
    app = await workspace(db, ws)
    return await sessions.sessions_of_peer(db, app.id, ws, peer_name, **options)


async def add_members_in(db: AsyncConnection, ws: str, name: str, peers: dict[str, Any]) -> Record:
    """The peers join the session, which is made (with its workspace) if missing, as Honcho does."""
    row, _ = await get_or_create_session_in(db, ws, name, peers=peers, field=("session_id",))
    return row


async def set_members_in(db: AsyncConnection, ws: str, name: str, peers: dict[str, Any]) -> Record:
    row = await session_in(db, ws, name)
    await sessions.set_members(db, row, peers)
    return row


async def remove_members_in(db: AsyncConnection, ws: str, name: str, peer_names: list[str]) -> Record:
    row = await session_in(db, ws, name)
    await sessions.remove_members(db, row, peer_names)
    return row


async def members_in(db: AsyncConnection, ws: str, name: str, *, page: int, size: int) -> Page[Record]:
    row = await session_in(db, ws, name)
    return await sessions.list_members(db, row.id, page=page, size=size)


async def member_config_in(db: AsyncConnection, ws: str, name: str, peer_name: str) -> Record:
    row = await session_in(db, ws, name)
    return await sessions.member(db, row, peer_name)


async def set_member_config_in(
    db: AsyncConnection, ws: str, name: str, peer_name: str, config: tuple[bool | None, bool | None]
) -> None:
    row = await session_in(db, ws, name)
    await sessions.set_member_config(db, row, peer_name, config)


async def clone_session_in(db: AsyncConnection, ws: str, name: str, *, message_id: str | None) -> Record:
    row = await session_in(db, ws, name)
    return await sessions.copy_session(db, row, message_id=message_id)


_MEMBER = text(
    """
    SELECT 1 FROM apps a
    JOIN sessions s ON s.app_id = a.id AND s.name = :session
    JOIN users u ON u.app_id = a.id AND u.name = :peer
    JOIN session_peers sp ON sp.session_id = s.id AND sp.peer_id = u.id AND sp.left_at IS NULL
    WHERE a.name = :workspace
    """
)


async def is_member(db: AsyncConnection, ws: str, session: str, peer_name: str) -> bool:
    """Whether the peer is a present member of the session (what a peer's key may read)."""
    found = await db.execute(_MEMBER, {"workspace": ws, "session": session, "peer": peer_name})
    return found.first() is not None


# --- messages -----------------------------------------------------------------------------------------


def _message_fields(ws: str, session: str) -> dict[str, Any]:
    return {
        "workspace_id": literal(ws),
        "session_id": literal(session),
        "peer_id": User.name,
        "token_count": Message.token_count,
        "created_at": Message.created_at,
    }


async def list_messages_in(
    db: AsyncConnection,
    ws: str,
    session: str,
    *,
    filters: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """The session's messages in order, each with its sender's name (``peer_name``). A session that is
    being deleted still lists its messages (as Honcho's does until its purge)."""
    app = await workspace(db, ws)
    row = await sessions.named_session(db, app.id, session, active=False)
    where = [Message.session_id == row.id]
    condition = compile_filters(filters, _message_fields(ws, session), metadata=Message.metadata_)
    if condition is not None:
        where.append(condition)
    source = Message.__table__.join(User.__table__, User.id == Message.peer_id)
    return await page_of(
        db, Message, where, columns=[_SENDER], reverse=reverse, page=page, size=size, select_from=source
    )


async def message_in(db: AsyncConnection, ws: str, session: str, message_id: str) -> Record:
    found = (
        await db.execute(
            select(*record_columns(Message), _SENDER)
            .join(User, User.id == Message.peer_id)
            .join(Session, Session.id == Message.session_id)
            .join(App, App.id == Message.app_id)
            .where(Message.id == message_id, Session.name == session, App.name == ws)
        )
    ).first()
    if found is None:
        raise NotFoundError(f"message {message_id!r} not found")
    return cast(Record, found)


async def update_message_in(
    db: AsyncConnection, ws: str, session: str, message_id: str, metadata: dict[str, Any] | None
) -> Record:
    row = await message_in(db, ws, session, message_id)
    if metadata is not None:
        await update_one(db, Message, {"id": row.id}, {"metadata_": check_metadata(metadata)}, "message")
        row = await message_in(db, ws, session, message_id)
    return row
