"""Honcho v3's operations, addressed as v3 addresses them: by the names of a workspace, its peers and its
sessions. Each resolves the names in the transaction it runs in and calls the storage function that
does the work (storage/workspaces.py, sessions.py, messages.py). A message read here carries the names
the v3 wire shows: ``peer_name`` (its sender) and ``session_name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import func, literal, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from storage import sessions
from storage.errors import InvalidError, NotFoundError
from storage.filters import conditions_of
from storage.query import Page, Record, page_of, record_columns, update_one
from storage.tables import TOKEN_ESTIMATE, App, Message, Metamessage, Session, SessionPeer, User
from storage.validation import check_metadata, check_name_findable, storable
from storage.workspaces import (
    check_no_active_sessions,
    get_or_create_peer,
    get_or_create_workspace,
    list_peers,
    update_peer,
    workspace,
)
from storage.workspaces import peer as peer_named

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
    """The active session named ``name`` in the workspace named ``ws`` (404 for either)."""
    row = await _session_named(db, ws, name)
    if not row.is_active:
        raise NotFoundError(f"session {name!r} not found")
    return row


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
    if not all(storable(v) for v in (ws, session, peer_name)):
        return False
    found = await db.execute(_MEMBER, {"workspace": ws, "session": session, "peer": peer_name})
    return found.first() is not None


# --- peer chat ---------------------------------------------------------------------------------------

SESSION_ALLOWLIST_MAX = 1000


def session_allowlist(filters: Any, *, must_include: str | None) -> list[str] | None:
    """The sessions a chat may recall from, by name, from its ``filters``: only ``session_id`` is taken
    (a name, a list of names, or ``{"in": [...]}``), since a filter dropped here would widen what is
    read; ``must_include``, the chat's own session, must be among them. None: no filter."""
    if filters is None:
        return None
    if not isinstance(filters, dict) or set(filters) != {"session_id"}:
        raise InvalidError("this endpoint's filters take the key session_id only", field=("filters",))
    value = filters["session_id"]
    if isinstance(value, dict) and set(value) == {"in"}:
        value = value["in"]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InvalidError(
            'filters.session_id is a session name, a list of them, or {"in": [...]}',
            field=("filters", "session_id"),
        )
    if len(names) > SESSION_ALLOWLIST_MAX:
        raise InvalidError(
            f"filters.session_id names at most {SESSION_ALLOWLIST_MAX} sessions",
            field=("filters", "session_id"),
        )
    names = list(dict.fromkeys(names))
    if must_include is not None and must_include not in names:
        raise InvalidError("session_id must be among filters.session_id", field=("filters", "session_id"))
    return names


async def member_of_all(db: AsyncConnection, ws: str, peer_name: str, names: Sequence[str]) -> bool:
    """Whether the peer is a present member of every session named (what a peer's key may chat over)."""
    if not names:
        return True
    present = (
        select(Session.name)
        .join(App, App.id == Session.app_id)
        .join(SessionPeer, SessionPeer.session_id == Session.id)
        .join(User, User.id == SessionPeer.peer_id)
        .where(
            App.name == ws,
            Session.name.in_(list(names)),
            User.name == peer_name,
            SessionPeer.left_at.is_(None),
        )
    )
    return set(names) <= set((await db.execute(present)).scalars())


@dataclass(frozen=True, slots=True)
class ChatScope:
    """Who a peer chat is about, resolved: the app, the observer and observed peers' rows, the session
    (id) and the sessions recall is limited to (ids), when given."""

    app_id: str
    observer: Record
    observed: Record
    session_id: str | None
    sessions: list[str] | None


async def chat_scope(
    db: AsyncConnection,
    ws: str,
    observer_name: str,
    *,
    target: str | None,
    session: str | None,
    allowlist: Sequence[str] | None,
) -> ChatScope:
    """Resolve a peer chat's names. The observer is made if missing (as Honcho does); the workspace,
    the target and the session must exist (404); allowed sessions that do not exist match nothing."""
    app = await workspace(db, ws)
    observer, _ = await get_or_create_peer(db, app.id, observer_name, field=("peer_id",))
    observed = observer
    if target is not None and target != observer_name:
        check_name_findable(target, what="peer")
        observed = await peer_named(db, app.id, target)
    named = [*(allowlist or ()), *([session] if session is not None else [])]
    for name in named:
        check_name_findable(name, what="session")
    found: dict[str, str] = {}
    if named:
        rows = await db.execute(
            select(Session.name, Session.id).where(Session.app_id == app.id, Session.name.in_(named))
        )
        found = dict(rows.all())
    if session is not None and session not in found:
        raise NotFoundError(f"session {session!r} not found")
    return ChatScope(
        app.id,
        observer,
        observed,
        found[session] if session is not None else None,
        [found[n] for n in allowlist if n in found] if allowlist is not None else None,
    )


def recall_conditions(observer_id: str, observed_id: str, sessions: Sequence[str] | None) -> list[Any]:
    """What a peer chat's message search may find (conditions on messages): the observed peer's own, and
    those of sessions it is a present member of; for another observer, only of sessions that observer is
    a present member of too; only of ``sessions`` (ids) when given."""

    def sessions_of(peer_id: str) -> Any:  # those it is in now: a peer that left reads no more of them
        return Message.session_id.in_(
            select(SessionPeer.session_id).where(
                SessionPeer.peer_id == peer_id, SessionPeer.left_at.is_(None)
            )
        )

    conditions: list[Any] = [or_(Message.peer_id == observed_id, sessions_of(observed_id))]
    if observer_id != observed_id:
        conditions.append(sessions_of(observer_id))
    if sessions is not None:
        conditions.append(Message.session_id.in_(list(sessions)))
    return conditions


async def sender_names(db: AsyncConnection, rows: Sequence[Record]) -> dict[str, str]:
    """The names of these messages' senders, by peer id."""
    ids = list({row.peer_id for row in rows})
    if not ids:
        return {}
    return dict((await db.execute(select(User.id, User.name).where(User.id.in_(ids)))).all())


# --- messages -----------------------------------------------------------------------------------------


def _message_fields(ws: str, session: Any) -> dict[str, Any]:
    """What v3 filters on messages name: ``session`` is the session's name (a constant, listing one
    session), or an expression of each message's (a search over many)."""
    return {
        "workspace_id": literal(ws),
        "session_id": session,
        "peer_id": SENDER_NAME,
        "token_count": Message.token_count,
        "created_at": Message.created_at,
    }


async def _session_named(db: AsyncConnection, ws: str, name: str, *columns: Any) -> Record:
    """The session named ``name`` in the workspace named ``ws``, deleted or not, in one read, with
    ``columns`` read beside it (expressions that may refer to the session)."""
    check_name_findable(ws, what="workspace")
    check_name_findable(name, what="session")
    row = (
        await db.execute(
            select(*record_columns(Session), *columns)
            .join(App, App.id == Session.app_id)
            .where(App.name == ws, Session.name == name)
        )
    ).first()
    if row is None:
        await workspace(db, ws)  # 404 for the workspace if that is what is missing
        raise NotFoundError(f"session {name!r} not found")
    return cast(Record, row)


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
    conditions = conditions_of(filters, _message_fields(ws, literal(session)), metadata=Message.metadata_)
    # The session is found and its matching messages counted in one statement: with the page's, two
    # round trips, where v1 takes three (its session by key, the count, the page).
    total = select(func.count()).where(Message.session_id == Session.id, *conditions).scalar_subquery()
    row = await _session_named(db, ws, session, total.label("total"))
    # The sender's name is read for the page's rows only: a subquery per row measured faster through
    # Serve than joining the users (bench/api.py).
    return await page_of(
        db,
        Message,
        [Message.session_id == row.id, *conditions],
        columns=[SENDER_NAME.label("peer_name")],
        reverse=reverse,
        page=page,
        size=size,
        total=row.total,
    )


async def message_in(db: AsyncConnection, ws: str, session: str, message_id: str) -> Record:
    for value, what in ((ws, "workspace"), (session, "session"), (message_id, "message")):
        check_name_findable(value, what=what)
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


# --- search -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchScope:
    """Where a v3 search looks: an app (and one of its sessions), narrowed by SQL conditions on messages."""

    app_id: str
    session_id: str | None
    conditions: list[Any]


def _sender() -> Any:
    """The sender's name, for a message row (its own users alias: never correlated with a join of users).
    Built once (``SENDER_NAME``): making an alias costs more than the query it is in."""
    sender = aliased(User)
    return select(sender.name).where(sender.id == Message.peer_id).scalar_subquery()


SENDER_NAME = _sender()


async def search_scope(
    db: AsyncConnection, ws: str, *, peer: str | None = None, session: str | None = None, filters: Any = None
) -> SearchScope:
    """The scope of a search of the workspace, of what one peer said in it, or of one session; the
    search's filters apply on top."""
    app = await workspace(db, ws)
    conditions: list[Any] = []
    session_id = None
    if session is not None:
        session_id = (await sessions.named_session(db, app.id, session, active=False)).id
    if peer is not None:
        sender = await peer_named(db, app.id, peer)
        conditions.append(Message.peer_id == sender.id)
    session_name = select(Session.name).where(Session.id == Message.session_id).scalar_subquery()
    conditions += conditions_of(filters, _message_fields(ws, session_name), metadata=Message.metadata_)
    return SearchScope(app.id, session_id, conditions)


async def names_of(db: AsyncConnection, rows: Sequence[Record]) -> tuple[dict[str, str], dict[str, str]]:
    """The names of these messages' senders and sessions, by id."""
    if not rows:
        return {}, {}
    session_ids = list({row.session_id for row in rows})
    peers = await sender_names(db, rows)
    named = dict(
        (await db.execute(select(Session.id, Session.name).where(Session.id.in_(session_ids)))).all()
    )
    return peers, named


# --- session context ----------------------------------------------------------------------------------

SUMMARY_LABELS = ("honcho_chat_summary_short", "honcho_chat_summary_long")  # the deriver's (derive.py)
# A summary's tokens, estimated as a message's token_count is.
_SUMMARY_TOKENS: Any = literal_column(TOKEN_ESTIMATE.replace("content", "metamessages.content")).label(
    "tokens"
)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    label: str
    content: str
    message_id: str  # the last message it covers
    message_seq: int
    token_count: int
    created_at: Any


async def summaries_in(db: AsyncConnection, ws: str, name: str) -> dict[str, SessionSummary]:
    """The session's newest summary of each kind (by label), each with the message it ends at."""
    row = await _session_named(db, ws, name)
    return await _summaries(db, row.id)


async def _summaries(db: AsyncConnection, session_id: str) -> dict[str, SessionSummary]:
    found: dict[str, SessionSummary] = {}
    for label in SUMMARY_LABELS:
        summary = (
            await db.execute(
                select(Metamessage.content, Metamessage.created_at, Message.id, Message.seq, _SUMMARY_TOKENS)
                .join(Message, Message.id == Metamessage.message_id)
                .where(Metamessage.session_id == session_id, Metamessage.label == label)
                .order_by(Metamessage.seq.desc())
                .limit(1)
            )
        ).first()
        if summary is not None:
            found[label] = SessionSummary(
                label, summary.content, summary.id, summary.seq, summary.tokens, summary.created_at
            )
    return found


def _newest_within(session_id: str, start: int, budget: int) -> Any:
    """The session's newest messages from ``start`` (a seq) whose token counts add up to at most
    ``budget``, oldest first: a running sum over at most ``budget`` of them (each counts a token or more)."""
    newest = (
        select(*record_columns(Message), _SENDER)
        .join(User, User.id == Message.peer_id)
        .where(Message.session_id == session_id, Message.seq >= start)
        .order_by(Message.seq.desc())
        .limit(budget)
        .subquery()
    )
    running = func.sum(newest.c.token_count).over(order_by=newest.c.seq.desc()).label("running")
    summed = select(newest, running).subquery()
    columns = [summed.c[column.key] for column in newest.c]
    return select(*columns).where(summed.c.running <= budget).order_by(summed.c.seq)


async def context_in(
    db: AsyncConnection, ws: str, name: str, *, tokens: int, summary: bool
) -> tuple[SessionSummary | None, list[Record]]:
    """Honcho v3's session context: with ``summary``, the session's longest summary that fits 40% of
    ``tokens`` (the long one if it holds more than the short one); then the newest messages from the one
    the summary ends at, as many as fit the rest of the budget by their token counts, oldest first."""
    row = await _session_named(db, ws, name)
    chosen: SessionSummary | None = None
    if summary:
        share = int(tokens * 0.4)
        kinds = await _summaries(db, row.id)
        short, long = kinds.get(SUMMARY_LABELS[0]), kinds.get(SUMMARY_LABELS[1])
        if (
            long is not None
            and long.token_count <= share
            and long.token_count > (short.token_count if short else 0)
        ):
            chosen = long
        elif short is not None and 0 < short.token_count <= share:
            chosen = short
    budget = tokens - (chosen.token_count if chosen else 0)
    if budget <= 0:
        return chosen, []
    rows = (await db.execute(_newest_within(row.id, chosen.message_seq if chosen else 0, budget))).all()
    return chosen, [cast(Record, r) for r in rows]


# --- the derivation queue -----------------------------------------------------------------------------


@dataclass
class QueueCounts:
    completed: int = 0  # derived, or parked after repeated failures (``parked`` says how many)
    in_progress: int = 0
    pending: int = 0  # waiting, or retrying after a failure
    parked: int = 0

    @property
    def total(self) -> int:
        return self.completed + self.in_progress + self.pending


# A session's queued messages: in progress (its lease is live), parked, and the rest pending.
_QUEUED = """
    SELECT q.session_id,
           count(*) FILTER (WHERE q.status = 'pending' AND coalesce(d.leased_until > now(), false)) AS in_progress,
           count(*) FILTER (WHERE q.status = 'parked') AS parked,
           count(*) FILTER (WHERE q.status = 'pending' AND NOT coalesce(d.leased_until > now(), false)) AS pending
    FROM derivation_queue q LEFT JOIN derivation_sessions d ON d.session_id = q.session_id
    WHERE q.app_id = :app {where}
    GROUP BY q.session_id
"""
_DONE = "SELECT d.session_id, d.done FROM derivation_sessions d WHERE d.app_id = :app AND d.done > 0 {where}"
_PEER = "(SELECT id FROM users WHERE app_id = :app AND name = :peer)"
# A message is the sender's work; an observer's, if it sent it or watches the session (observe_others).
_SENT = f"EXISTS (SELECT 1 FROM messages m WHERE m.id = q.message_id AND m.peer_id = {_PEER})"
_WATCHED = (
    f"EXISTS (SELECT 1 FROM session_peers sp WHERE sp.session_id = {{t}}.session_id "
    f"AND sp.peer_id = {_PEER} AND sp.observe_others AND sp.left_at IS NULL)"
)
_IN_SESSION = (
    f"EXISTS (SELECT 1 FROM session_peers sp WHERE sp.session_id = d.session_id AND sp.peer_id = {_PEER})"
)


async def queue_status(
    db: AsyncConnection,
    ws: str,
    *,
    session: str | None = None,
    sender: str | None = None,
    observer: str | None = None,
) -> tuple[QueueCounts, dict[str, QueueCounts]]:
    """The workspace's derivation work (of one session, of the messages one peer sent, or of those one
    peer observes, when named), in all and by session name. Waiting messages are counted one by one;
    finished ones by session, so with a peer named, ``completed`` is of the sessions it is in. A
    workspace, session or peer that is not there has none."""
    peer = sender or observer
    if not all(storable(v) for v in (ws, session or "-", peer or "-")) or (
        sender and observer and sender != observer
    ):
        return QueueCounts(), {}
    app = (await db.execute(select(App.id).where(App.name == ws))).scalar()
    if app is None:
        return QueueCounts(), {}
    queued, done, params = "", "", {"app": app, "peer": peer}
    if session is not None:
        queued = done = (
            " AND {t}.session_id = (SELECT id FROM sessions WHERE app_id = :app AND name = :session)"
        )
        params["session"] = session
    if sender is not None:
        queued += f" AND {_SENT}"
    elif observer is not None:
        queued += f" AND ({_SENT} OR {_WATCHED})"
    if peer is not None:
        done += f" AND {_IN_SESSION}"
    by_session: dict[str, QueueCounts] = {}
    for row in await db.execute(text(_QUEUED.format(where=queued.format(t="q"))), params):
        counts = by_session.setdefault(row.session_id, QueueCounts())
        counts.in_progress, counts.pending = int(row.in_progress), int(row.pending)
        counts.parked = int(row.parked)
        counts.completed += counts.parked
    for row in await db.execute(text(_DONE.format(where=done.format(t="d"))), params):
        by_session.setdefault(row.session_id, QueueCounts()).completed += int(row.done)
    names = dict(
        (await db.execute(select(Session.id, Session.name).where(Session.id.in_(list(by_session))))).all()
    )
    total = QueueCounts()
    named: dict[str, QueueCounts] = {}
    for session_id, counts in by_session.items():
        total.completed += counts.completed
        total.in_progress += counts.in_progress
        total.pending += counts.pending
        total.parked += counts.parked
        named[names.get(session_id, session_id)] = counts
    return total, named
