"""Honcho v3's workspaces and peers: an app and its users, addressed by name.

A v3 id is the name (``^[a-zA-Z0-9_-]+$``, up to 512 characters): the v1 API's app ``name`` is the
workspace id, a user's ``name`` the peer id. What v3 adds is a ``configuration`` object on each. The
v1 API shows the same rows with their opaque ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import ConflictError, InvalidError
from storage.filters import conditions_of
from storage.ids import new_id
from storage.query import Page, Record, fetch_one, fetch_or_create, page_of, record_columns, update_one
from storage.tables import NAME_MAX, App, Session, User
from storage.validation import check_metadata, check_name_findable

DEFAULT_ASSISTANT = "assistant"  # rapport.settings AppSettings.assistant_peer's default
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")

Field = tuple[str | int, ...]


def check_v3_name(name: Any, *, field: Field, what: str) -> str:
    """A v3 id as given in a path or a body: 1 to 512 of ``[a-zA-Z0-9_-]``."""
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX or not NAME_PATTERN.match(name):
        raise InvalidError(
            f"a {what} id is 1 to {NAME_MAX} letters, digits, '_' or '-'; got {str(name)[:60]!r}",
            field=field,
        )
    return name


def check_configuration(configuration: Any, *, field: Field = ("configuration",)) -> dict[str, Any]:
    """A configuration object: stored as given, with metadata's limits (size, plain JSON)."""
    return check_metadata(configuration, what="configuration") if configuration is not None else {}


# --- workspaces ---------------------------------------------------------------------------------------


async def workspace(db: AsyncConnection, name: str) -> Record:
    """The workspace (app) named ``name``, or NotFoundError."""
    check_name_findable(name, what="workspace")
    return await fetch_one(db, App, {"name": name}, f"workspace {name!r}")


async def get_or_create_workspace(
    db: AsyncConnection,
    name: str,
    *,
    metadata: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
) -> tuple[Record, bool]:
    """The workspace, created with this metadata and configuration if missing (an existing one is
    returned as it is, as Honcho does); and whether it was created."""
    check_v3_name(name, field=("id",), what="workspace")
    values = {
        "id": new_id(),
        "name": name,
        "metadata_": check_metadata(metadata or {}),
        "configuration": check_configuration(configuration),
    }
    return await fetch_or_create(db, App, values, ("name",), f"workspace {name!r}")


async def update_workspace(
    db: AsyncConnection,
    name: str,
    *,
    metadata: dict[str, Any] | None,
    configuration: dict[str, Any] | None,
) -> Record:
    """New metadata replaces the old; configuration is merged key by key at the top level. A missing
    workspace is created (as Honcho's PUT does)."""
    row, _ = await get_or_create_workspace(db, name)
    values: dict[str, Any] = {}
    if metadata is not None:
        values["metadata_"] = check_metadata(metadata)
    if configuration is not None:
        values["configuration"] = {**row.configuration, **check_configuration(configuration)}
    return await update_one(db, App, {"id": row.id}, values, f"workspace {name!r}")


async def list_workspaces(
    db: AsyncConnection, *, filters: Any = None, reverse: bool = False, page: int = 1, size: int = 50
) -> Page[Record]:
    fields = {"id": App.name, "created_at": App.created_at}
    where = conditions_of(filters, fields, metadata=App.metadata_)
    return await page_of(db, App, where, reverse=reverse, page=page, size=size)


async def check_no_active_sessions(db: AsyncConnection, app_id: str, name: str) -> None:
    """A workspace is deleted only once its sessions are (Honcho's rule): 409 otherwise."""
    active = (
        await db.execute(
            select(func.count()).select_from(Session).where(Session.app_id == app_id, Session.is_active)
        )
    ).scalar_one()
    if active:
        raise ConflictError(f"workspace {name!r} still has {active} active session(s): delete them first")


# --- peers --------------------------------------------------------------------------------------------


async def peer(db: AsyncConnection, app_id: str, name: str) -> Record:
    check_name_findable(name, what="peer")
    return await fetch_one(db, User, {"app_id": app_id, "name": name}, f"peer {name!r}")


async def pair_named(
    db: AsyncConnection, ws: str, observer: str, target: str | None
) -> tuple[str, Record, Record]:
    """The workspace's app id and the rows of the peer named ``observer`` and of the one it is asked
    about, ``target`` (itself when None); 404 for any that is missing."""
    app = await workspace(db, ws)
    seer = await peer(db, app.id, observer)
    seen = seer if target is None or target == observer else await peer(db, app.id, target)
    return app.id, seer, seen


async def get_or_create_peer(
    db: AsyncConnection,
    app_id: str,
    name: str,
    *,
    metadata: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
    field: Field = ("id",),
) -> tuple[Record, bool]:
    """The peer (user) named ``name`` in the workspace, created if missing. Given metadata or
    configuration replaces an existing peer's (Honcho's get-or-create does so for peers)."""
    check_v3_name(name, field=field, what="peer")
    values = {
        "id": new_id(),
        "app_id": app_id,
        "name": name,
        "metadata_": check_metadata(metadata or {}),
        "configuration": check_configuration(configuration),
    }
    row, created = await fetch_or_create(db, User, values, ("app_id", "name"), f"peer {name!r}")
    if created:
        return row, True
    changes: dict[str, Any] = {}
    if metadata is not None and metadata != row.metadata_:
        changes["metadata_"] = values["metadata_"]
    if configuration is not None and configuration != row.configuration:
        changes["configuration"] = values["configuration"]
    if changes:
        row = await update_one(db, User, {"id": row.id}, changes, f"peer {name!r}")
    return row, False


async def peers_by_name(db: AsyncConnection, app_id: str, names: Sequence[str]) -> dict[str, Record]:
    """The peers among ``names``, created where missing, by name (one statement when all exist)."""
    wanted = list(dict.fromkeys(names))
    for i, name in enumerate(wanted):
        check_v3_name(name, field=("peers", i), what="peer")
    rows = (
        await db.execute(select(*record_columns(User)).where(User.app_id == app_id, User.name.in_(wanted)))
    ).all()
    found = {row.name: row for row in rows}
    for i, name in enumerate(wanted):
        if name not in found:
            found[name], _ = await get_or_create_peer(db, app_id, name, field=("peers", i))
    return found


async def update_peer(
    db: AsyncConnection,
    app_id: str,
    name: str,
    *,
    metadata: dict[str, Any] | None,
    configuration: dict[str, Any] | None,
) -> Record:
    """New metadata and configuration replace the old ones; a missing peer is created."""
    row, _ = await get_or_create_peer(db, app_id, name, metadata=metadata, configuration=configuration)
    return row


async def list_peers(
    db: AsyncConnection,
    app_id: str,
    workspace_name: str,
    *,
    filters: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    fields: dict[str, Any] = {
        "id": User.name,
        "created_at": User.created_at,
        "workspace_id": literal(workspace_name),
    }
    where = [User.app_id == app_id, *conditions_of(filters, fields, metadata=User.metadata_)]
    return await page_of(db, User, where, reverse=reverse, page=page, size=size)


async def assistant_peer_id(db: AsyncConnection, app_id: str, name: str) -> str:
    """The id of the app's assistant peer (the sender of a v1 message with ``is_user`` false), made on
    first use (marked ``assistant``, so v1's user lists leave it out; a peer or user of that name made
    before is used as it is): one statement once it exists."""
    values = {
        "id": new_id(),
        "app_id": app_id,
        "name": name,
        "metadata_": {},
        "configuration": {},
        "assistant": True,
    }
    row, _ = await fetch_or_create(db, User, values, ("app_id", "name"), f"peer {name!r}")
    return str(row.id)
