"""Query building blocks shared by the per-entity modules: fetch one, page through many, update one,
insert under a parent that must exist."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, exists, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import ConflictError, NotFoundError, translate_integrity_errors
from storage.tables import Base
from storage.validation import check_filter, check_page

M = TypeVar("M", bound=Base)


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One page of a list: the same shape as Honcho's ``Page[...]`` responses."""

    items: list[M]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.size) if self.total else 0


async def fetch_one(db: AsyncSession, model: type[M], where: Sequence[ColumnElement[bool]], what: str) -> M:
    """The one row matching every condition, or NotFoundError naming ``what``."""
    row = (await db.scalars(select(model).where(*where).limit(1))).first()
    if row is None:
        raise NotFoundError(f"{what} not found")
    return row


async def fetch_page(
    db: AsyncSession,
    model: type[M],
    where: Sequence[ColumnElement[bool]],
    *,
    filter: Any = None,
    reverse: bool = False,
    page: int = 1,
    size: int = 50,
) -> Page[M]:
    """Rows matching ``where`` and whose metadata contains ``filter``, in insertion order (or reversed)."""
    page, size = check_page(page, size)
    conditions = list(where)
    metadata_filter = check_filter(filter)
    if metadata_filter is not None:
        conditions.append(model.metadata_.contains(metadata_filter))  # type: ignore[attr-defined]
    seq = model.seq  # type: ignore[attr-defined]
    total = (await db.execute(select(func.count()).select_from(model).where(*conditions))).scalar_one()
    items: list[M] = []
    if total > (page - 1) * size:
        stmt = (
            select(model)
            .where(*conditions)
            .order_by(seq.desc() if reverse else seq.asc())
            .offset((page - 1) * size)
            .limit(size)
        )
        items = list((await db.scalars(stmt)).all())
    return Page(items=items, total=total, page=page, size=size)


async def update_one(
    db: AsyncSession,
    model: type[M],
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    what: str,
    *,
    conflict: str = "that name is already taken",
) -> M:
    """Apply ``values`` to the one row matching ``where`` and return it; NotFoundError if there is none."""
    if not values:
        return await fetch_one(db, model, where, what)
    stmt = update(model).where(*where).values(**values).returning(model)
    with translate_integrity_errors(conflict=conflict):
        options = {"synchronize_session": False, "populate_existing": True}  # refresh any loaded copy
        row = (await db.scalars(stmt, execution_options=options)).first()
    if row is None:
        raise NotFoundError(f"{what} not found")
    return row


async def insert_under_parent(
    db: AsyncSession,
    model: type[M],
    values: dict[str, Any],
    parent: type[Base],
    parent_where: Sequence[ColumnElement[bool]],
    parent_what: str,
    *,
    conflict: str = "that name is already taken",
) -> M:
    """Insert one row only if its parent exists: ``INSERT ... SELECT ... WHERE EXISTS (parent)``.

    One round trip both checks the parent chain (ids from the path must belong together) and writes.
    """
    mapper = model.__mapper__
    columns = [mapper.attrs[name].columns[0] for name in values]  # attribute names, e.g. metadata_
    source = select(
        *(literal(value, type_=column.type) for value, column in zip(values.values(), columns, strict=True))
    ).where(exists().where(*parent_where).select_from(parent))
    stmt = insert(model).from_select(columns, source).returning(model)
    with translate_integrity_errors(conflict=conflict, missing=f"{parent_what} not found"):
        row = (await db.scalars(stmt)).first()
    if row is None:
        raise NotFoundError(f"{parent_what} not found")
    return row


async def get_or_create(
    db: AsyncSession,
    model: type[M],
    values: dict[str, Any],
    unique: Sequence[Any],
    what: str,
) -> M:
    """The row whose ``unique`` columns equal ``values``', inserted if missing.

    ``INSERT ... ON CONFLICT DO NOTHING`` then a read: concurrent callers all get the one row, never a
    duplicate or an error.
    """
    stmt = (
        pg_insert(model).values(**values).on_conflict_do_nothing(index_elements=list(unique)).returning(model)
    )
    lookup = [column == values[column.key] for column in unique]
    for _ in range(3):
        with translate_integrity_errors():
            created = (await db.scalars(stmt)).first()
        if created is not None:
            return created
        # Another caller's row won the race; read it (each statement sees a fresh snapshot).
        existing = (await db.scalars(select(model).where(*lookup))).first()
        if existing is not None:
            return existing
    raise ConflictError(f"{what} kept changing while being fetched; retry the request")
