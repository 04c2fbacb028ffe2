"""Honcho v3's conclusions and peer cards, on the v1 tables.

A conclusion is what an observer peer holds about an observed peer: a document of a collection of the
observed peer (its user). What Rapport itself concludes about a peer, v3's observer = observed, is the
peer's own ``honcho`` collection, the deriver's facts; what another peer holds of it is a collection of
the observed peer with ``observer_id`` set (named ``observer:<observer's id>``). A conclusion's level
and the session it came from are the document's ``level`` and ``session_id``.

The index holds documents by collection, so a conclusion is embedded and indexed as any document is
(pipelines/memory.py ``Memory.documents_transaction``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import case, delete, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from storage.collections import pair_collection_name
from storage.errors import InvalidError, NotFoundError
from storage.filters import conditions_of
from storage.ids import new_id
from storage.query import Page, Record, fetch_or_create, page_of, record_columns
from storage.tables import Collection, Document, PeerCard, Session, User
from storage.validation import check_name_findable, check_text
from storage.workspaces import peer as peer_named
from storage.workspaces import workspace

CONTENT_MAX = 65_535  # Honcho v3's ConclusionCreate.content
CARD_LINES_MAX = 200
CARD_LINE_MAX = 2_000

Observer = aliased(User, name="observer")
Observed = aliased(User, name="observed")
_OBSERVER_ID = case((Collection.observer_id.is_(None), Collection.user_id), else_=Collection.observer_id)


async def collection_of(db: AsyncConnection, app_id: str, observer: Record, observed: Record) -> str:
    """The id of the collection holding ``observer``'s conclusions about ``observed``, made if missing."""
    pair = (observer.id, observed.id)
    values = {
        "id": new_id(),
        "app_id": app_id,
        "user_id": observed.id,
        "observer_id": None if observer.id == observed.id else observer.id,
        "name": pair_collection_name(pair),
        "metadata_": {},
    }
    row, _ = await fetch_or_create(db, Collection, values, ("user_id", "name"), "a collection of conclusions")
    return str(row.id)


@dataclass(frozen=True, slots=True)
class NewConclusion:
    """A conclusion to store, resolved: its collection and owner, and where it came from."""

    app_id: str
    user_id: str  # the observed peer's row
    collection_id: str
    content: str
    session_id: str | None
    observer: str  # names, for the answer
    observed: str
    session: str | None


async def resolve(db: AsyncConnection, ws: str, items: Sequence[dict[str, Any]]) -> list[NewConclusion]:
    """Check and place up to 100 conclusions: their peers and sessions must exist (404 naming the first
    missing one), their collections are made if missing."""
    if not 1 <= len(items) <= 100:
        raise InvalidError(f"a batch holds 1 to 100 conclusions, got {len(items)}", field=("conclusions",))
    app = await workspace(db, ws)
    peers: dict[str, Record] = {}
    sessions: dict[str, str] = {}
    resolved = []
    for i, item in enumerate(items):
        content = check_text(item["content"], what="content", min_length=1, max_length=CONTENT_MAX)
        for name in (item["observer_id"], item["observed_id"]):
            if name not in peers:
                peers[name] = await peer_named(db, app.id, name)
        session = item.get("session_id")
        if session is not None and session not in sessions:
            check_name_findable(session, what="session")
            found = (
                await db.execute(
                    select(Session.id).where(
                        Session.app_id == app.id, Session.name == session, Session.is_active
                    )
                )
            ).scalar()
            if found is None:
                raise NotFoundError(f"session {session!r} not found (conclusions[{i}].session_id)")
            sessions[session] = str(found)
        observer, observed = peers[item["observer_id"]], peers[item["observed_id"]]
        resolved.append(
            NewConclusion(
                app.id,
                observed.id,
                await collection_of(db, app.id, observer, observed),
                content,
                sessions.get(session) if session else None,
                observer.name,
                observed.name,
                session,
            )
        )
    return resolved


# --- reading ------------------------------------------------------------------------------------------

_NAMES = (
    Observer.name.label("observer_name"),
    Observed.name.label("observed_name"),
    Session.name.label("session_name"),
)


def _joined() -> Any:
    return (
        Document.__table__.join(Collection.__table__, Collection.id == Document.collection_id)
        .join(Observed, Observed.id == Collection.user_id)
        .join(Observer, Observer.id == _OBSERVER_ID)
        .outerjoin(Session.__table__, Session.id == Document.session_id)
    )


def _fields(ws: str) -> dict[str, Any]:
    return {
        "id": Document.id,
        "workspace_id": literal(ws),
        "observer_id": Observer.name,
        "observer": Observer.name,
        "observed_id": Observed.name,
        "observed": Observed.name,
        "session_id": Session.name,
        "level": Document.level,
        "content": Document.content,
        "created_at": Document.created_at,
    }


def _conditions(app_id: str, ws: str, filters: Any) -> list[Any]:
    return [Document.app_id == app_id, *conditions_of(filters, _fields(ws), metadata=Document.metadata_)]


async def list_conclusions(
    db: AsyncConnection, ws: str, *, filters: Any = None, reverse: bool = False, page: int = 1, size: int = 50
) -> Page[Record]:
    """The workspace's conclusions, newest first (``reverse``: oldest first), with their peers' and
    session's names."""
    app = await workspace(db, ws)
    return await page_of(
        db,
        Document,
        _conditions(app.id, ws, filters),
        columns=_NAMES,
        reverse=not reverse,
        page=page,
        size=size,
        select_from=_joined(),
    )


async def by_ids(db: AsyncConnection, ids: Sequence[str]) -> list[Record]:
    """These conclusions with their names, in the order of ``ids``."""
    if not ids:
        return []
    rows = (
        await db.execute(
            select(*record_columns(Document), *_NAMES).select_from(_joined()).where(Document.id.in_(ids))
        )
    ).all()
    found = {row.id: row for row in rows}
    return [cast(Record, found[i]) for i in ids if i in found]


@dataclass(frozen=True, slots=True)
class QueryScope:
    app_id: str
    user_id: str
    collection_id: str | None  # None: no conclusions yet
    conditions: list[Any]


def _named(filters: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = filters.get(key)
        if isinstance(value, str):
            return value
    return None


async def query_scope(db: AsyncConnection, ws: str, filters: Any) -> QueryScope:
    """Where a semantic query of conclusions looks: the one observer/observed pair its filters name
    (``observer``/``observer_id`` and ``observed``/``observed_id``, required as in Honcho); the rest of
    the filters apply too."""
    if not isinstance(filters, dict):
        raise InvalidError("filters must name the observer and the observed peer", field=("filters",))
    observer_name = _named(filters, "observer", "observer_id")
    observed_name = _named(filters, "observed", "observed_id")
    if observer_name is None or observed_name is None:
        raise InvalidError(
            "filters must name the observer (observer_id) and the observed peer (observed_id)",
            field=("filters",),
        )
    app = await workspace(db, ws)
    observer = await peer_named(db, app.id, observer_name)
    observed = await peer_named(db, app.id, observed_name)
    name = pair_collection_name((observer.id, observed.id))
    collection = (
        await db.execute(
            select(Collection.id).where(Collection.user_id == observed.id, Collection.name == name)
        )
    ).scalar()
    return QueryScope(app.id, observed.id, collection, _conditions(app.id, ws, filters))


async def matching(db: AsyncConnection, ids: Sequence[str], conditions: Sequence[Any]) -> list[Record]:
    """The conclusions among ``ids`` that meet ``conditions``, with their names, in the order of ``ids``."""
    if not ids:
        return []
    rows = (
        await db.execute(
            select(*record_columns(Document), *_NAMES)
            .select_from(_joined())
            .where(Document.id.in_(list(ids)), *conditions)
        )
    ).all()
    found = {row.id: row for row in rows}
    return [cast(Record, found[i]) for i in ids if i in found]


async def delete_conclusion(db: AsyncConnection, ws: str, conclusion_id: str) -> None:
    """Delete one conclusion of the workspace (404 if it has none of that id); the caller takes it out
    of the index. Unlike v1's documents API, this may delete what the deriver stored."""
    check_name_findable(conclusion_id, what="conclusion")
    app = await workspace(db, ws)
    deleted = await db.execute(
        delete(Document).where(Document.id == conclusion_id, Document.app_id == app.id).returning(Document.id)
    )
    if deleted.first() is None:
        raise NotFoundError(f"conclusion {conclusion_id!r} not found")


async def conclusion_in(db: AsyncConnection, ws: str, conclusion_id: str) -> Record:
    check_name_findable(conclusion_id, what="conclusion")
    app = await workspace(db, ws)
    found = await by_ids(db, [conclusion_id])
    if not found or found[0].app_id != app.id:
        raise NotFoundError(f"conclusion {conclusion_id!r} not found")
    return found[0]


async def of_pair(
    db: AsyncConnection,
    app_id: str,
    observer: Record,
    observed: Record,
    *,
    session_ids: Sequence[str] | None = None,
) -> list[Record]:
    """Every conclusion ``observer`` holds about ``observed`` that still holds (none a dream superseded;
    of these sessions, explicit ones only, when given), newest first."""
    name = pair_collection_name((observer.id, observed.id))
    query = (
        select(*record_columns(Document))
        .join(Collection, Collection.id == Document.collection_id)
        .where(Collection.user_id == observed.id, Collection.name == name, Document.invalid_at.is_(None))
        .order_by(Document.created_at.desc(), Document.seq.desc())
    )
    if session_ids is not None:
        query = query.where(Document.session_id.in_(list(session_ids)), Document.level == "explicit")
    return list((await db.execute(query)).all())


# --- peer cards ---------------------------------------------------------------------------------------


def check_card(card: Any) -> list[str]:
    if not isinstance(card, list) or len(card) > CARD_LINES_MAX:
        raise InvalidError(f"a peer card is a list of at most {CARD_LINES_MAX} lines", field=("peer_card",))
    return [check_text(line, what="a card line", max_length=CARD_LINE_MAX) for line in card]


async def card_of(db: AsyncConnection, ws: str, observer_name: str, target: str | None) -> list[str] | None:
    """The card ``observer`` keeps about ``target`` (itself when None); None when it keeps none. The
    observer must exist."""
    app = await workspace(db, ws)
    observer = await peer_named(db, app.id, observer_name)
    observed = observer
    if target is not None and target != observer_name:
        try:
            observed = await peer_named(db, app.id, target)
        except NotFoundError:
            return None  # no card about a peer that is not there
    card = (
        await db.execute(
            select(PeerCard.card).where(
                PeerCard.observer_id == observer.id, PeerCard.observed_id == observed.id
            )
        )
    ).scalar()
    return None if card is None else list(card)


async def set_card(
    db: AsyncConnection, ws: str, observer_name: str, target: str | None, card: Any
) -> list[str]:
    """Replace the card ``observer`` keeps about ``target`` (itself when None); the peers are made if
    missing, as Honcho does."""
    from storage.workspaces import get_or_create_peer, get_or_create_workspace

    lines = check_card(card)
    app, _ = await get_or_create_workspace(db, ws)
    observer, _ = await get_or_create_peer(db, app.id, observer_name, field=("peer_id",))
    observed = observer
    if target is not None and target != observer_name:
        observed, _ = await get_or_create_peer(db, app.id, target, field=("target",))
    statement = pg_insert(PeerCard).values(
        observer_id=observer.id, observed_id=observed.id, app_id=app.id, card=lines
    )
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=[PeerCard.observer_id, PeerCard.observed_id],
            set_={
                "card": statement.excluded.card,
                "updated_at": statement.excluded.updated_at,
                "derived": False,
            },
        )
    )
    return lines
