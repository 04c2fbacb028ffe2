"""Honcho v3 filters compiled by storage.filters and run on real PostgreSQL: which rows each one selects,
and where each malformed one is refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from storage.errors import InvalidError
from storage.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_VALUES, FilterFields, compile_filters
from tests.db import scratch_database

SQL = "x'; DROP TABLE items; --"

items = Table(
    "items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("n", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("nick", Text),
    Column("metadata", JSONB, nullable=False),
    Index(
        "ix_items_metadata", "metadata", postgresql_using="gin", postgresql_ops={"metadata": "jsonb_path_ops"}
    ),
)

FIELDS: FilterFields = {
    "id": items.c.name,
    "created_at": items.c.created_at,
    "n": items.c.n,
    "active": items.c.active,
    "nick": items.c.nick,
}

ROWS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    # name, created_at, nick, metadata; id and n are the position (1-based); active is False for 3, 5, 9.
    (
        "alice",
        "2024-01-01T00:00:00Z",
        "al",
        {
            "role": "admin",
            "dept": "eng",
            "score": 10,
            "tags": ["important", "urgent"],
            "profile": {"level": 5, "premium": True},
        },
    ),
    (
        "bob",
        "2024-02-01T00:00:00Z",
        None,
        {
            "role": "user",
            "dept": "eng",
            "score": 5,
            "tags": ["normal"],
            "profile": {"level": 1, "premium": False},
        },
    ),
    (
        "carol",
        "2024-03-01T00:00:00Z",
        "cc",
        {"role": "admin", "dept": "sales", "score": 1, "note": "Hello World"},
    ),
    ("dave", "2024-04-01T00:00:00Z", None, {"score": "15", "active": "true"}),
    ("eve", "2024-05-01T00:00:00Z", "e", {"score": 5.5, "active": False}),
    ("frank", "2024-06-01T12:00:00Z", None, {"score": 999999999, "active": True}),
    ("100%_off", "2024-07-01T00:00:00Z", None, {"date": "2024-02-01", "tags": ["Prod-ready", 5]}),
    (SQL, "2024-08-01T00:00:00Z", None, {"sql": SQL}),
    ("grace", "2024-09-01T00:00:00Z", None, {"in": 1}),
    ("heidi", "2024-10-01T00:00:00Z", None, {"nested": {"a": {"b": {"c": 1}}}, "nullish": None}),
    ("ivan", "2024-11-01T00:00:00Z", None, {}),
    ("judy", "2024-12-31T23:59:59Z", None, {"score": "abc", "tags": "important", "date": "2023-12-31"}),
]
ALL = set(range(1, len(ROWS) + 1))


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with scratch_database("rapport_filters") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            items.create(conn)
            conn.execute(
                insert(items),
                [
                    {
                        "id": index,
                        "name": name,
                        "created_at": datetime.fromisoformat(created_at),
                        "n": index,
                        "active": index not in (3, 5, 9),
                        "nick": nick,
                        "metadata": metadata,
                    }
                    for index, (name, created_at, nick, metadata) in enumerate(ROWS, start=1)
                ],
            )
        try:
            yield engine
        finally:
            engine.dispose()


def _ids(engine: Engine, filters: Any) -> set[int]:
    condition = compile_filters(filters, FIELDS, metadata=items.c.metadata)
    query = select(items.c.id)
    if condition is not None:
        query = query.where(condition)
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def _nest(key: str, depth: int, inner: dict[str, Any]) -> dict[str, Any]:
    for _ in range(depth):
        inner = {key: [inner]}
    return inner


SELECTS: list[tuple[Any, set[int]]] = [
    # nothing to filter
    (None, ALL),
    ({}, ALL),
    # equality, lists, wildcards
    ({"id": "alice"}, {1}),
    ({"id": "alice", "n": 2}, set()),
    ({"id": ["alice", "bob"]}, {1, 2}),
    ({"id": []}, set()),
    ({"id": "*"}, ALL),
    ({"n": 3.0}, {3}),
    ({"active": False}, {3, 5, 9}),
    ({"nick": None}, ALL - {1, 3, 5}),
    # operators on columns
    ({"id": {"in": ["alice", "carol", "nobody"]}}, {1, 3}),
    ({"id": {"in": ["alice", "*"]}}, ALL),
    ({"n": {"in": []}}, set()),
    ({"n": {"gt": 10}}, {11, 12}),
    ({"n": {"gte": 10}}, {10, 11, 12}),
    ({"n": {"lt": 3}}, {1, 2}),
    ({"n": {"lte": 3}}, {1, 2, 3}),
    ({"n": {"gt": 2.5, "lt": 4.5}}, {3, 4}),
    ({"n": {"lt": 10**20}}, ALL),
    ({"n": {"ne": 1}}, ALL - {1}),
    ({"n": {"in": [1, 3.0, 12, 99]}}, {1, 3, 12}),
    ({"n": {"gte": "*"}}, ALL),
    ({"n": {}}, ALL),
    ({"active": {"ne": True}}, {3, 5, 9}),
    ({"active": {"in": [True]}}, ALL - {3, 5, 9}),
    ({"nick": {"ne": None}}, {1, 3, 5}),
    ({"nick": {"ne": "al"}}, {3, 5}),  # a NULL column equals and differs from nothing
    ({"id": {"gt": "heidi"}}, {8, 11, 12}),  # text orders as text: ivan, judy, x'...
    ({"id": {"contains": "AL"}}, {1}),  # contains is case-insensitive, as upstream
    ({"id": {"icontains": "a"}}, {1, 3, 4, 6, 8, 9, 11}),
    ({"id": {"contains": "%"}}, {7}),  # LIKE's own characters match themselves
    ({"id": {"contains": "_"}}, {7}),
    ({"id": {"icontains": "0%_O"}}, {7}),
    # ISO-8601 timestamps
    ({"created_at": {"gte": "2024-06-01T12:00:00Z"}}, {6, 7, 8, 9, 10, 11, 12}),
    ({"created_at": {"gt": "2024-06-01T12:00:00Z"}}, {7, 8, 9, 10, 11, 12}),
    ({"created_at": {"lt": "2024-03-01"}}, {1, 2}),
    ({"created_at": {"lte": "2024-03-01T00:00:00+00:00"}}, {1, 2, 3}),
    ({"created_at": {"gte": "2024-02-01", "lte": "2024-04-01"}}, {2, 3, 4}),
    ({"created_at": "2024-02-01T01:00:00+01:00"}, {2}),
    ({"created_at": {"gte": "2024-12-31 23:59:59"}}, {12}),  # no zone: UTC
    ({"created_at": {"in": ["2024-01-01", "2024-03-01T00:00:00Z"]}}, {1, 3}),
    ({"created_at": {"ne": "2024-01-01T00:00:00.000Z"}}, ALL - {1}),
    # AND / OR / NOT
    ({"AND": [{"n": {"gt": 2}}, {"n": {"lt": 5}}]}, {3, 4}),
    ({"OR": [{"id": "alice"}, {"n": 12}]}, {1, 12}),
    ({"NOT": [{"id": "alice"}, {"n": {"gt": 2}}]}, {2}),  # neither
    ({"NOT": [{"nick": "al"}]}, ALL - {1}),  # NOT is the complement: NULL nicks included
    ({"active": True, "OR": [{"n": 1}, {"n": 3}]}, {1}),
    ({"AND": []}, ALL),
    ({"OR": []}, ALL),
    ({"NOT": []}, ALL),
    ({"OR": [{"id": "*"}, {"id": "alice"}]}, ALL),
    ({"OR": [{}, {"id": "alice"}]}, ALL),
    ({"OR": [{"AND": []}, {"id": "alice"}]}, ALL),
    ({"NOT": [{"id": "*"}]}, set()),
    ({"AND": [{"id": "*"}, {"id": "alice"}]}, {1}),
    (
        {"AND": [{"OR": [{"id": "alice"}, {"id": "bob"}]}, {"NOT": [{"metadata": {"role": "user"}}]}]},
        {1},
    ),
    (_nest("AND", MAX_DEPTH, {"id": "alice"}), {1}),
    (_nest("NOT", 2, {"id": "alice"}), {1}),
    # metadata: containment
    ({"metadata": {"role": "admin"}}, {1, 3}),
    ({"metadata": {"role": "admin", "dept": "eng"}}, {1}),
    ({"AND": [{"metadata": {"role": "admin"}}, {"metadata": {"dept": "eng"}}]}, {1}),
    ({"OR": [{"metadata": {"role": "admin"}}, {"metadata": {"dept": "eng"}}]}, {1, 2, 3}),
    ({"NOT": [{"metadata": {"role": "admin"}}, {"metadata": {"dept": "eng"}}]}, ALL - {1, 2, 3}),
    ({"metadata": {"profile": {"premium": True}}}, {1}),
    ({"metadata": {"nested": {"a": {"b": {"c": 1}}}}}, {10}),
    ({"metadata": {"tags": ["important"]}}, {1}),
    ({"metadata": {"tags": ["important", "missing"]}}, set()),
    ({"metadata": {"tags": "important"}}, {12}),  # a scalar equals a scalar, not a list element
    ({"metadata": {"nullish": None}}, {10}),
    ({"metadata": {"score": 5.0}}, {2}),
    ({"metadata": {"score": "15"}}, {4}),
    ({"metadata": {"role": "*", "dept": "eng"}}, {1, 2}),
    ({"metadata": "*"}, ALL),
    ({"metadata": {}}, ALL),
    ({"metadata": {"profile": {}}}, {1, 2}),  # an empty object: the key holds an object
    ({"metadata": {"contains": {"role": "admin"}}}, {1, 3}),
    ({"metadata": {"contains": "*"}}, ALL),
    ({"metadata": {"sql": SQL}}, {8}),
    # metadata: operators on keys, typed
    ({"metadata": {"score": {"gt": 5}}}, {1, 5, 6}),  # "15" is a string, not a number
    ({"metadata": {"score": {"gte": 5}}}, {1, 2, 5, 6}),
    ({"metadata": {"score": {"lt": 5.5}}}, {2, 3}),
    ({"metadata": {"score": {"lte": 5.5}}}, {2, 3, 5}),
    ({"metadata": {"score": {"gte": 3, "lte": 8}}}, {2, 5}),
    ({"metadata": {"score": {"gte": 999999999}}}, {6}),
    ({"metadata": {"score": {"gt": "14"}}}, {4, 12}),  # strings compare with strings only
    ({"metadata": {"date": {"gte": "2024-01-15"}}}, {7}),
    ({"metadata": {"date": {"lt": "2024-01-15"}}}, {12}),
    ({"metadata": {"score": {"ne": 5}}}, {1, 3, 4, 5, 6, 12}),  # the key must be there
    ({"metadata": {"active": {"ne": False}}}, {4, 6}),
    ({"metadata": {"score": {"in": [5, 10, "15"]}}}, {1, 2, 4}),
    ({"metadata": {"score": {"in": [5.0]}}}, {2}),
    ({"metadata": {"score": {"in": []}}}, set()),
    ({"metadata": {"score": {"in": [1, "*"]}}}, ALL),
    ({"metadata": {"role": {"in": ["admin", "user"]}}}, {1, 2, 3}),
    ({"metadata": {"nullish": {"in": [None]}}}, {10}),
    ({"metadata": {"note": {"contains": "world"}}}, {3}),
    ({"metadata": {"note": {"icontains": "O W"}}}, {3}),
    ({"metadata": {"tags": {"contains": "import"}}}, {1, 12}),  # a list element, or the string
    ({"metadata": {"tags": {"icontains": "PROD"}}}, {7}),
    ({"metadata": {"tags": {"contains": "5"}}}, set()),  # the number 5 is not text
    ({"metadata": {"score": {"contains": "5"}}}, {4}),
    ({"metadata": {"sql": {"contains": "'; DROP"}}}, {8}),
    ({"metadata": {"score": {"gt": "*"}}}, ALL),
    ({"metadata": {"role": "admin", "score": {"gt": 5}}}, {1}),
    ({"metadata": {"profile": {"level": {"gte": 3}}}}, {1}),  # nested keys
    ({"metadata": {"profile": {"premium": False, "level": {"lt": 3}}}}, {2}),
    ({"metadata": {"nested": {"a": {"b": {"c": {"gt": 0}}}}}}, {10}),
    ({"metadata": {"profile": {"level": {"in": [1, 5]}}}}, {1, 2}),
    ({"NOT": [{"metadata": {"score": {"gt": 5}}}]}, ALL - {1, 5, 6}),  # missing keys included
    ({"NOT": [{"metadata": {"tags": {"contains": "import"}}}]}, ALL - {1, 12}),
    # values that look like SQL are values
    ({"id": SQL}, {8}),
    ({"id": {"contains": "'; DROP"}}, {8}),
    ({"id": {"in": [SQL, "'); --"]}}, {8}),
]


@pytest.mark.parametrize(("filters", "expected"), SELECTS, ids=[repr(f)[:80] for f, _ in SELECTS])
def test_selects(engine: Engine, filters: Any, expected: set[int]) -> None:
    assert _ids(engine, filters) == expected


def _invalid(filters: Any, **kwargs: Any) -> InvalidError:
    kwargs.setdefault("metadata", items.c.metadata)
    with pytest.raises(InvalidError) as raised:
        compile_filters(filters, FIELDS, **kwargs)
    assert raised.value.detail
    return raised.value


def _logical_path(key: str, depth: int) -> tuple[str | int, ...]:
    path: tuple[str | int, ...] = ("filters",)
    for _ in range(depth):
        path = (*path, key, 0)
    return path


def _deep_metadata(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        inner = {"k": inner}
    return inner


REFUSES: list[tuple[Any, tuple[str | int, ...]]] = [
    ([{"id": "alice"}], ("filters",)),
    ("id", ("filters",)),
    ({"bogus": 1}, ("filters", "bogus")),
    ({"and": []}, ("filters", "and")),
    ({"AND": {"n": 1}}, ("filters", "AND")),
    ({"OR": "x"}, ("filters", "OR")),
    ({"NOT": {"n": 1}}, ("filters", "NOT")),  # NOT takes a list, as upstream
    ({"NOT": None}, ("filters", "NOT")),
    ({"OR": [{"n": 1}, 2]}, ("filters", "OR", 1)),
    ({"AND": [{"n": 1}, {"created_at": {"gte": "not a date"}}]}, ("filters", "AND", 1, "created_at", "gte")),
    ({"OR": [{"NOT": [{"bogus": 1}]}]}, ("filters", "OR", 0, "NOT", 0, "bogus")),
    (_nest("AND", MAX_DEPTH + 1, {"id": "a"}), _logical_path("AND", MAX_DEPTH + 1)),
    (_nest("OR", MAX_DEPTH + 1, {}), _logical_path("OR", MAX_DEPTH + 1)),
    ({"n": {"between": [1, 2]}}, ("filters", "n", "between")),
    ({"n": {"gt": 1, "approx": 2}}, ("filters", "n", "approx")),
    ({"n": {"in": 1}}, ("filters", "n", "in")),
    ({"n": {"in": "12"}}, ("filters", "n", "in")),
    ({"n": {"in": [1, "two"]}}, ("filters", "n", "in", 1)),
    ({"n": [1, None]}, ("filters", "n", 1)),
    ({"n": "1"}, ("filters", "n")),
    ({"n": True}, ("filters", "n")),
    ({"n": {"gt": float("nan")}}, ("filters", "n", "gt")),
    ({"n": {"contains": "1"}}, ("filters", "n", "contains")),
    ({"id": {"contains": 5}}, ("filters", "id", "contains")),
    ({"id": {"icontains": ["a"]}}, ("filters", "id", "icontains")),
    ({"id": {"gte": 1}}, ("filters", "id", "gte")),
    ({"id": 5}, ("filters", "id")),
    ({"id": {"ne": {"a": 1}}}, ("filters", "id", "ne")),
    ({"id": "a\x00b"}, ("filters", "id")),
    ({"active": "yes"}, ("filters", "active")),
    ({"active": {"gt": True}}, ("filters", "active", "gt")),
    ({"created_at": {"gte": "2024-01-01'; DROP TABLE items; --"}}, ("filters", "created_at", "gte")),
    ({"created_at": {"lt": 1700000000}}, ("filters", "created_at", "lt")),
    ({"created_at": "yesterday"}, ("filters", "created_at")),
    ({"created_at": {"in": ["2024-01-01", "soon"]}}, ("filters", "created_at", "in", 1)),
    ({"created_at": {"contains": "2024"}}, ("filters", "created_at", "contains")),
    ({"metadata": "admin"}, ("filters", "metadata")),
    ({"metadata": ["admin"]}, ("filters", "metadata")),
    ({"metadata": {"gt": 5}}, ("filters", "metadata", "gt")),
    ({"metadata": {"in": 1}}, ("filters", "metadata", "in")),  # keys named like operators are operators
    ({"metadata": {"contains": "x"}}, ("filters", "metadata", "contains")),
    ({"metadata": {"contains": {"a": 1}, "role": "admin"}}, ("filters", "metadata", "role")),
    ({"metadata": {"a": "x\x00"}}, ("filters", "metadata", "a")),
    ({"metadata": {"a": {"b": ["ok", "\x00"]}}}, ("filters", "metadata", "a", "b", 1)),
    ({"metadata": {"a": float("inf")}}, ("filters", "metadata", "a")),
    ({"metadata": {"score": {"gt": True}}}, ("filters", "metadata", "score", "gt")),
    ({"metadata": {"score": {"gt": None}}}, ("filters", "metadata", "score", "gt")),
    ({"metadata": {"score": {"lte": [1]}}}, ("filters", "metadata", "score", "lte")),
    ({"metadata": {"score": {"in": "x"}}}, ("filters", "metadata", "score", "in")),
    ({"metadata": {"score": {"in": [1, {"a": 1}]}}}, ("filters", "metadata", "score", "in", 1)),
    ({"metadata": {"tags": {"contains": 5}}}, ("filters", "metadata", "tags", "contains")),
    ({"metadata": {"score": {"gt": 1, "approx": 2}}}, ("filters", "metadata", "score", "approx")),
    ({"metadata": {"p": {"q": {"gte": 1, "like": "x"}}}}, ("filters", "metadata", "p", "q", "like")),
    ({"metadata": {"score": {"ne": float("inf")}}}, ("filters", "metadata", "score", "ne")),
    ({"metadata": _deep_metadata(11)}, ("filters", "metadata", *(["k"] * 10), "leaf")),
    ({"metadata": {"k": _deep_metadata(10)}}, ("filters", "metadata", *(["k"] * 10), "leaf")),
    ({"metadata": {"a": [[[[[[[[[[1]]]]]]]]]]}}, ("filters", "metadata", "a", *([0] * 10))),
    (
        {"metadata": {"contains": _deep_metadata(11)}},
        ("filters", "metadata", "contains", *(["k"] * 10), "leaf"),
    ),
    ({"AND": [{"n": i} for i in range(MAX_CONDITIONS + 1)]}, ("filters",)),
    ({"n": {"in": list(range(MAX_VALUES + 1))}}, ("filters",)),
    ({"metadata": {"tags": ["x"] * (MAX_VALUES + 1)}}, ("filters",)),
]


@pytest.mark.parametrize(("filters", "field"), REFUSES, ids=[repr(f)[:80] for f, _ in REFUSES])
def test_refuses(filters: Any, field: tuple[str | int, ...]) -> None:
    assert _invalid(filters).field == field


def test_metadata_is_a_field_only_where_the_resource_has_it() -> None:
    assert _invalid({"metadata": {"a": 1}}, metadata=None).field == ("filters", "metadata")


def test_errors_sit_under_the_given_loc() -> None:
    error = _invalid({"OR": [{"n": {"gt": "x"}}]}, loc=("body", "filters"))
    assert error.field == ("body", "filters", "OR", 0, "n", "gt")


def test_limits_are_generous_enough() -> None:
    assert (
        compile_filters({"AND": [{"n": i} for i in range(MAX_CONDITIONS)]}, FIELDS, metadata=None) is not None
    )
    assert compile_filters({"n": {"in": list(range(MAX_VALUES))}}, FIELDS, metadata=None) is not None
    assert (
        compile_filters({"metadata": {"tags": ["x"] * MAX_VALUES}}, FIELDS, metadata=items.c.metadata)
        is not None
    )
    assert compile_filters({"metadata": _deep_metadata(10)}, FIELDS, metadata=items.c.metadata) is not None
    assert (
        compile_filters({"metadata": {"a": [[[[[[[[[1]]]]]]]]]}}, FIELDS, metadata=items.c.metadata)
        is not None
    )


def test_every_value_is_bound(engine: Engine) -> None:
    filters = {
        "OR": [
            {"id": SQL},
            {"id": {"icontains": SQL}},
            {"metadata": {"sql": SQL, "score": {"gt": SQL, "ne": SQL, "in": [SQL]}, "x": {"contains": SQL}}},
            {"metadata": {"contains": {"sql": SQL}}},
        ]
    }
    condition = compile_filters(filters, FIELDS, metadata=items.c.metadata)
    assert condition is not None
    with engine.connect() as conn:
        sql = str(select(items.c.id).where(condition).compile(conn))
        assert "DROP" not in sql
        assert set(conn.execute(select(items.c.id).where(condition)).scalars()) == {8}
        assert conn.execute(select(func.count()).select_from(items)).scalar_one() == len(ROWS)


def test_datetime_objects_from_internal_callers(engine: Engine) -> None:
    assert _ids(engine, {"created_at": {"lt": datetime(2024, 2, 1)}}) == {1}
    assert _ids(engine, {"created_at": {"lt": datetime(2024, 2, 1, tzinfo=UTC)}}) == {1}


def _plan(engine: Engine, filters: Any) -> str:
    """EXPLAIN of the filter with sequential scans discouraged, so an index that can serve it is used."""
    condition = compile_filters(filters, FIELDS, metadata=items.c.metadata)
    assert condition is not None
    with engine.connect() as conn:
        compiled = select(items.c.id).where(condition).compile(conn)
        params = {
            key: Jsonb(value) if isinstance(value, dict) else value for key, value in compiled.params.items()
        }
        conn.execute(text("SET enable_seqscan = off"))
        plan = conn.exec_driver_sql(f"EXPLAIN {compiled}", params).scalars().all()
        conn.rollback()
    return "\n".join(plan)


@pytest.mark.parametrize(
    "filters",
    [
        {"metadata": {"role": "admin", "profile": {"premium": True}}},
        {"metadata": {"role": {"in": ["admin", "user"]}}},
        {"metadata": {"contains": {"role": "admin"}}},
    ],
)
def test_metadata_equality_uses_the_gin_index(engine: Engine, filters: Any) -> None:
    assert "ix_items_metadata" in _plan(engine, filters)
