"""Query building blocks shared by the per-entity modules: fetch one, page through many, insert, update,
insert under a parent that must exist, get-or-create.

Data access runs as SQLAlchemy Core on a plain connection and returns rows, not ORM objects: a row's
attributes carry the mapped names (``row.id``, ``row.metadata_``), and skipping the ORM's unit of work
and identity map more than halved the CPU cost of a request (see docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeAlias, TypeVar, cast

from sqlalchemy import Label, Row, Table, bindparam, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import ConflictError, NotFoundError, translate_integrity_errors
from storage.tables import Base
from storage.validation import check_filter, check_ids, check_page

Record: TypeAlias = Row[Any]
"""One stored resource, read by attribute: ``record.id``, ``record.metadata_``, ``record.created_at``."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: the same shape as Honcho's ``Page[...]`` responses."""

    items: list[T]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.size) if self.total else 0


@cache
def record_columns(model: type[Base]) -> tuple[Label[Any], ...]:
    """Every column of the model, labelled with its attribute name (so ``metadata`` reads as ``metadata_``)."""
    return tuple(column.label(name) for name, column in model.__mapper__.columns.items())


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


@cache
def _column_keys(model: type[Base]) -> dict[str, str]:
    return {name: column.key for name, column in model.__mapper__.columns.items()}


def table_values(model: type[Base], values: dict[str, Any]) -> dict[str, Any]:
    """Attribute-named values (``metadata_``) as the table's column keys (``metadata``)."""
    keys = _column_keys(model)
    return {keys[name]: value for name, value in values.items()}


Keys: TypeAlias = dict[str, Any]
"""Equality conditions by attribute name, e.g. ``{"id": session_id, "user_id": user_id}``.

Statements built from keys are built once per shape and cached, with the values bound at execution:
building SQLAlchemy statements per request was a tenth of a request's CPU."""


def row_keys(what: str, row_id: str, **owners: str) -> Keys:
    """Keys for one row by its id and its owners' ids (``app_id=...``), each checked to be an id."""
    check_ids(**{what: row_id}, **{name.removesuffix("_id"): value for name, value in owners.items()})
    return {"id": row_id, **owners}


def _column(model: type[Base], name: str) -> Any:
    return model.__mapper__.columns[name]


@cache
def _select_by(model: type[Base], keys: tuple[str, ...]) -> Any:
    return (
        select(*record_columns(model))
        .where(*(_column(model, k) == bindparam(f"k_{k}") for k in keys))
        .limit(1)
    )


def _key_params(keys: Keys) -> dict[str, Any]:
    return {f"k_{k}": v for k, v in keys.items()}


async def fetch_one(db: AsyncConnection, model: type[Base], keys: Keys, what: str) -> Record:
    """The one row whose columns equal ``keys``, or NotFoundError naming ``what``."""
    row = (await db.execute(_select_by(model, tuple(keys)), _key_params(keys))).first()
    if row is None:
        raise NotFoundError(f"{what} not found")
    return row


async def fetch_by_ids(db: AsyncConnection, model: type[Base], ids: Sequence[str]) -> list[Record]:
    """The rows among ``ids`` that exist (in no particular order)."""
    if not ids:
        return []
    return list(
        (await db.execute(select(*record_columns(model)).where(_column(model, "id").in_(list(ids))))).all()
    )


async def count_rows(db: AsyncConnection, model: type[Base], *, app_id: str | None = None) -> int:
    """How many rows the table holds (of one app, given ``app_id``)."""
    where = [_column(model, "app_id") == app_id] if app_id else []
    return int((await db.execute(select(func.count()).select_from(model).where(*where))).scalar_one())


async def rows_after(
    db: AsyncConnection, model: type[Base], after: int, limit: int, *, app_id: str | None = None
) -> list[Record]:
    """The next ``limit`` rows in insertion order after ``seq`` ``after`` (of one app, given ``app_id``):
    a whole table read page by page, each page by the seq index."""
    seq = _column(model, "seq")
    where = [seq > after] + ([_column(model, "app_id") == app_id] if app_id else [])
    query = select(*record_columns(model)).where(*where).order_by(seq).limit(limit)
    return list((await db.execute(query)).all())


async def fetch_page(
    db: AsyncConnection,
    model: type[Base],
    keys: Keys,
    *,
    filter: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[Record]:
    """Rows matching ``keys`` whose metadata contains ``filter``, in insertion order (or reversed)."""
    page, size = check_page(page, size)
    where = [_column(model, k) == v for k, v in keys.items()]
    metadata_filter = check_filter(filter)
    if metadata_filter is not None:
        where.append(model.metadata_.contains(metadata_filter))  # type: ignore[attr-defined]
    seq = model.seq  # type: ignore[attr-defined]
    total = (await db.execute(select(func.count()).select_from(model).where(*where))).scalar_one()
    items: list[Record] = []
    if total > (page - 1) * size:
        stmt = (
            select(*record_columns(model))
            .where(*where)
            .order_by(seq.desc() if reverse else seq.asc())
            .offset((page - 1) * size)
            .limit(size)
        )
        items = list((await db.execute(stmt)).all())
    return Page(items=items, total=total, page=page, size=size)


async def page_of(
    db: AsyncConnection,
    model: type[Base],
    where: Sequence[Any],
    *,
    columns: Sequence[Any] = (),
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
    select_from: Any = None,
    order_by: Any = None,
    total: int | None = None,
) -> Page[Record]:
    """One page of the rows matching the ``where`` conditions, in insertion order (or ``order_by``'s;
    reversed with ``reverse``), with ``columns`` read beside the model's own (joined through
    ``select_from``). ``total``: how many rows match, if the caller counted them already."""
    page, size = check_page(page, size)
    source = select_from if select_from is not None else model
    if total is None:
        total = (await db.execute(select(func.count()).select_from(source).where(*where))).scalar_one()
    items: list[Record] = []
    if total > (page - 1) * size:
        seq = order_by if order_by is not None else model.seq  # type: ignore[attr-defined]
        stmt = (
            select(*record_columns(model), *columns)
            .select_from(source)
            .where(*where)
            .order_by(seq.desc() if reverse else seq.asc())
            .offset((page - 1) * size)
            .limit(size)
        )
        items = list((await db.execute(stmt)).all())
    return Page(items=items, total=total, page=page, size=size)


async def insert_one(
    db: AsyncConnection,
    model: type[Base],
    values: dict[str, Any],
    *,
    conflict: str = "that name is already taken",
) -> Record:
    stmt = insert(_table(model)).values(table_values(model, values)).returning(*record_columns(model))
    with translate_integrity_errors(conflict=conflict):
        return (await db.execute(stmt)).one()


async def insert_many(db: AsyncConnection, model: type[Base], rows: list[dict[str, Any]]) -> list[Record]:
    """Insert rows in the given order (so ``seq`` keeps it) and return them in that order."""
    if not rows:
        return []
    stmt = insert(_table(model)).returning(*record_columns(model), sort_by_parameter_order=True)
    with translate_integrity_errors():
        return list((await db.execute(stmt, [table_values(model, row) for row in rows])).all())


@cache
def _update_by(model: type[Base], keys: tuple[str, ...], names: tuple[str, ...]) -> Any:
    return (
        update(_table(model))
        .where(*(_column(model, k) == bindparam(f"k_{k}") for k in keys))
        .values({_column(model, n).key: bindparam(f"v_{n}", type_=_column(model, n).type) for n in names})
        .returning(*record_columns(model))
    )


async def update_one(
    db: AsyncConnection,
    model: type[Base],
    keys: Keys,
    values: dict[str, Any],
    what: str,
    *,
    conflict: str = "that name is already taken",
) -> Record:
    """Apply ``values`` to the one row matching ``keys`` and return it; NotFoundError if there is none."""
    if not values:
        return await fetch_one(db, model, keys, what)
    stmt = _update_by(model, tuple(keys), tuple(values))
    params = {**_key_params(keys), **{f"v_{n}": v for n, v in values.items()}}
    with translate_integrity_errors(conflict=conflict):
        row = (await db.execute(stmt, params)).first()
    if row is None:
        raise NotFoundError(f"{what} not found")
    return row


@cache
def _insert_under(
    model: type[Base], names: tuple[str, ...], parent: type[Base], keys: tuple[str, ...]
) -> Any:
    columns = [_column(model, n) for n in names]
    source = select(*(bindparam(f"v_{n}", type_=c.type) for n, c in zip(names, columns, strict=True))).where(
        exists().where(*(_column(parent, k) == bindparam(f"k_{k}") for k in keys)).select_from(parent)
    )
    return insert(_table(model)).from_select(columns, source).returning(*record_columns(model))


async def insert_under_parent(
    db: AsyncConnection,
    model: type[Base],
    values: dict[str, Any],
    parent: type[Base],
    parent_keys: Keys,
    parent_what: str,
    *,
    conflict: str = "that name is already taken",
) -> Record:
    """Insert one row only if its parent exists: ``INSERT ... SELECT ... WHERE EXISTS (parent)``.

    One round trip both checks the parent chain (ids from the path must belong together) and writes.
    """
    stmt = _insert_under(model, tuple(values), parent, tuple(parent_keys))
    params = {**_key_params(parent_keys), **{f"v_{n}": v for n, v in values.items()}}
    with translate_integrity_errors(conflict=conflict, missing=f"{parent_what} not found"):
        row = (await db.execute(stmt, params)).first()
    if row is None:
        raise NotFoundError(f"{parent_what} not found")
    return row


@cache
def _insert_if_absent(model: type[Base], names: tuple[str, ...], unique: tuple[str, ...]) -> Any:
    return (
        pg_insert(_table(model))
        .values({_column(model, n).key: bindparam(f"v_{n}", type_=_column(model, n).type) for n in names})
        .on_conflict_do_nothing(index_elements=[_column(model, u).name for u in unique])
        .returning(*record_columns(model))
    )


async def get_or_create(
    db: AsyncConnection, model: type[Base], values: dict[str, Any], unique: tuple[str, ...], what: str
) -> Record:
    """The row whose ``unique`` columns equal ``values``', inserted if missing.

    ``INSERT ... ON CONFLICT DO NOTHING`` then a read: concurrent callers all get the one row, never a
    duplicate or an error.
    """
    return (await fetch_or_create(db, model, values, unique, what, read_first=False))[0]


async def fetch_or_create(
    db: AsyncConnection,
    model: type[Base],
    values: dict[str, Any],
    unique: tuple[str, ...],
    what: str,
    *,
    read_first: bool = True,
) -> tuple[Record, bool]:
    """``get_or_create``, saying whether the row was created. ``read_first``: look before inserting (one
    statement when the row exists, as it usually does for v3's get-or-create calls)."""
    insert_stmt = _insert_if_absent(model, tuple(values), unique)
    insert_params = {f"v_{n}": v for n, v in values.items()}
    keys = {u: values[u] for u in unique}
    if read_first:
        existing = (await db.execute(_select_by(model, unique), _key_params(keys))).first()
        if existing is not None:
            return existing, False
    for _ in range(3):
        with translate_integrity_errors():
            created = (await db.execute(insert_stmt, insert_params)).first()
        if created is not None:
            return created, True
        # Another caller's row won the race; read it (each statement sees a fresh snapshot).
        existing = (await db.execute(_select_by(model, unique), _key_params(keys))).first()
        if existing is not None:
            return existing, False
    raise ConflictError(f"{what} kept changing while being fetched; retry the request")
