"""Honcho v3's filter language (the ``filters`` object of v3 list and search bodies) compiled to one bound
SQLAlchemy boolean expression.

A filter is a JSON object. Its keys are ANDed together; each key is one of

* ``AND`` / ``OR`` / ``NOT``: a list of filter objects. AND needs all of them, OR any of them, and NOT
  needs none of them (``{"NOT": [a, b]}`` is "not a and not b"). NOT takes a list, as upstream does.
* a field of the resource (the ``fields`` the caller passes; ``id``, ``created_at``...), given
  - a literal: equality (``null``: the column is NULL);
  - a list: membership, the same as ``{"in": [...]}``;
  - ``"*"``: anything, i.e. no condition;
  - an operator object, its operators ANDed: ``gt gte lt lte`` (order), ``ne``, ``in`` (a list),
    ``contains`` / ``icontains`` (substring of a text field, case-insensitive both: upstream runs both
    as ILIKE). An operator whose value is ``"*"``, or an ``in`` list holding ``"*"``, is no condition.
* ``metadata`` (the resource's JSONB metadata), given an object whose
  - plain values are matched by JSON containment (``@>``): ``{"metadata": {"a": {"b": 1}, "tags":
    ["x"]}}`` matches metadata whose ``a`` holds ``b: 1`` and whose ``tags`` include ``"x"``;
  - operator objects (an object with any operator key) apply to the value at that key, nested keys
    included (``{"metadata": {"user": {"level": {"gte": 3}}}}``);
  - ``"*"`` values are no condition;
  or an operator object itself, of which only ``contains`` (an object: containment) applies to the
  metadata as a whole, as upstream treats ``{"metadata": {"contains": {...}}}``.

Values have types and compare with their types, never as text. ``created_at`` takes ISO-8601 strings
(``2024-01-01``, ``2024-01-01T12:00:00Z``; no zone means UTC) bound as timestamps; number fields take
numbers; a metadata value compares with a number only where it is a JSON number (numerically) and with a
string only where it is a JSON string, so ``"15"`` is not greater than 10 (upstream compares the text of
the value, numerically where it parses as a number). Metadata ``ne`` is JSON inequality and needs the key
present; ``in`` means equal to one of (scalars); ``contains`` / ``icontains`` take a string and match a
string value or a list with a string element containing it. Every value the client gave is a bound
parameter.

Fields follow SQL: a NULL column satisfies no comparison (only ``null`` equality and ``{"ne": null}``
test for it). Where upstream's results hang on SQL NULLs or on conditions it drops, we choose set logic:
``NOT x`` is exactly the rows ``x`` does not match (rows missing the metadata key or with a NULL column
included), and an OR with a member that matches everything (``{}``, ``{"id": "*"}``) matches everything.
Like upstream, an empty ``AND``/``OR``/``NOT`` list is no condition and an empty ``in`` list matches
nothing.

Metadata equality and containment compile to ``metadata @> :doc`` (all the plain values of one metadata
object in one document; a metadata ``in`` is an OR of such), which the GIN ``jsonb_path_ops`` index on
metadata serves; order and substring operators on metadata cannot use it.

Limits (upstream has only the first): filter objects sit at most ``MAX_DEPTH`` (5) AND/OR/NOT levels
deep; a filter holds at most ``MAX_CONDITIONS`` (100) conditions (a field operator, an ``in``, a metadata
containment document) and ``MAX_VALUES`` (1000) values (each item of an ``in`` list and each scalar of a
metadata value counts); metadata keys, and the values matched there, reach at most
``MAX_METADATA_DEPTH`` (10) keys deep. A filter that breaks any rule raises InvalidError whose ``field``
is the path to the offending key under ``loc``, e.g. ``("filters", "AND", 1, "created_at", "gte")``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final, Literal, TypeAlias

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    column,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.types import JSON, Numeric

from storage.errors import Field, InvalidError
from storage.validation import storable

Column: TypeAlias = "ColumnElement[Any] | QueryableAttribute[Any]"
FilterFields: TypeAlias = Mapping[str, Column]
"""The filterable fields of one resource by their API names, e.g. ``{"id": users.c.name}``."""

MAX_DEPTH: Final = 5
MAX_CONDITIONS: Final = 100
MAX_VALUES: Final = 1000
MAX_METADATA_DEPTH: Final = 10

LOGICAL: Final = ("AND", "OR", "NOT")
ORDER: Final[Mapping[str, Callable[[Any, Any], ColumnElement[bool]]]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
OPERATORS: Final = frozenset({*ORDER, "ne", "in", "contains", "icontains"})
WILDCARD: Final = "*"
METADATA: Final = "metadata"

_LIKE_ESCAPE: Final = "\\"

Kind: TypeAlias = Literal["datetime", "number", "bool", "text", "json", "other"]
Path: TypeAlias = Field


def compile_filters(
    filters: Any,
    fields: FilterFields,
    *,
    metadata: Column | None,
    loc: tuple[str | int, ...] = ("filters",),
) -> ColumnElement[bool] | None:
    """The condition ``filters`` states over ``fields`` and the ``metadata`` column; None when it states
    none (None, ``{}``, only wildcards). Raises InvalidError naming the offending key under ``loc``."""
    if filters is None:
        return None
    columns = {name: _element(column) for name, column in fields.items()}
    return _Compiler(columns, None if metadata is None else _element(metadata), loc).filter(filters, loc, 0)


def conditions_of(
    filters: Any, fields: FilterFields, *, metadata: Column | None, loc: tuple[str | int, ...] = ("filters",)
) -> list[ColumnElement[bool]]:
    """``compile_filters`` as a list of conditions to add to a query's own: empty when it states none."""
    condition = compile_filters(filters, fields, metadata=metadata, loc=loc)
    return [] if condition is None else [condition]


def _element(column: Column) -> ColumnElement[Any]:
    """A mapped attribute (``User.name``) as the column expression it stands for."""
    return column.__clause_element__() if isinstance(column, QueryableAttribute) else column


def _is_wildcard(value: Any) -> bool:
    return isinstance(value, str) and value == WILDCARD


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_operators(value: Any) -> bool:
    """An object with any operator key is an operator object (so metadata keys named like operators
    cannot be matched literally, as upstream documents)."""
    return isinstance(value, dict) and any(key in OPERATORS for key in value)


def _all(parts: Sequence[ColumnElement[bool] | None]) -> ColumnElement[bool] | None:
    """AND of the parts; None (everything) drops out."""
    kept = [part for part in parts if part is not None]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else and_(*kept)


def _like_pattern(text: str) -> str:
    """``%text%`` with LIKE's own characters in ``text`` matched literally."""
    escaped = (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def _parse_datetime(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _kind(expression: ColumnElement[Any]) -> Kind:
    """What values a field compares with, from its SQL type."""
    sql_type = expression.type
    if isinstance(sql_type, JSON):
        return "json"
    try:
        python_type = sql_type.python_type
    except NotImplementedError:
        return "other"
    if issubclass(python_type, datetime):
        return "datetime"
    if issubclass(python_type, bool):
        return "bool"
    if issubclass(python_type, int | float | Decimal):
        return "number"
    if issubclass(python_type, str | Enum):
        return "text"
    return "other"


_EXPECTED: Final[Mapping[Kind, str]] = {
    "datetime": "an ISO-8601 date-time string such as 2024-01-31T12:00:00Z",
    "number": "a number",
    "bool": "true or false",
    "text": "a string",
    "other": "a string, number or boolean",
}


class _Compiler:
    """One compilation: the resource's fields, and the conditions and values counted so far."""

    def __init__(
        self, fields: Mapping[str, ColumnElement[Any]], metadata: ColumnElement[Any] | None, loc: Path
    ) -> None:
        self.fields = fields
        self.metadata = metadata
        self.loc = loc
        self.conditions = 0
        self.values = 0

    # -- budget --------------------------------------------------------------------------------------

    def _condition(self) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidError(
                f"the filter holds more than {MAX_CONDITIONS} conditions; split the query", field=self.loc
            )

    def _value(self, count: int = 1) -> None:
        self.values += count
        if self.values > MAX_VALUES:
            raise InvalidError(
                f"the filter holds more than {MAX_VALUES} values; split the query", field=self.loc
            )

    # -- filter objects -------------------------------------------------------------------------------

    def filter(self, node: Any, path: Path, depth: int) -> ColumnElement[bool] | None:
        if depth > MAX_DEPTH:
            raise InvalidError(
                f"filters nest at most {MAX_DEPTH} AND/OR/NOT levels deep; flatten this one", field=path
            )
        if not isinstance(node, dict):
            raise InvalidError(
                f"a filter must be a JSON object of field names to conditions, got {type(node).__name__}",
                field=path,
            )
        parts: list[ColumnElement[bool] | None] = []
        for key, value in node.items():
            here = (*path, key)
            if key in LOGICAL:
                parts.append(self._logical(key, value, here, depth))
            else:
                parts.append(self._field(key, value, here))
        return _all(parts)

    def _logical(self, key: str, value: Any, path: Path, depth: int) -> ColumnElement[bool] | None:
        if not isinstance(value, list):
            raise InvalidError(
                f'{key} takes a list of filter objects, e.g. {{"{key}": [{{"id": "a"}}]}}; '
                f"got {type(value).__name__}",
                field=path,
            )
        members = [self.filter(member, (*path, index), depth + 1) for index, member in enumerate(value)]
        if not members:
            return None  # as upstream: an empty list adds no condition
        if key == "AND":
            return _all(members)
        if key == "OR":
            if any(member is None for member in members):
                return None  # one member matches everything
            return or_(*(member for member in members if member is not None))
        # NOT: none of them. "IS NOT TRUE" keeps the rows where a member is NULL (unknown), so NOT is
        # the complement of what the member matches.
        return _all([false() if member is None else member.is_not(True) for member in members])

    def _field(self, name: Any, value: Any, path: Path) -> ColumnElement[bool] | None:
        if name == METADATA and self.metadata is not None:
            return self._metadata(self.metadata, value, path)
        expression = self.fields.get(name) if isinstance(name, str) else None
        if expression is None:
            known = sorted({*self.fields, *([METADATA] if self.metadata is not None else []), *LOGICAL})
            raise InvalidError(
                f"cannot filter on {str(name)[:100]!r}; the fields here are {', '.join(known)}", field=path
            )
        kind = _kind(expression)
        if kind == "json":
            return self._metadata(expression, value, path)
        if _is_wildcard(value):
            return None
        if isinstance(value, list):
            return self._in(expression, kind, value, path)
        if isinstance(value, dict):
            return _all([self._operator(expression, kind, op, arg, (*path, op)) for op, arg in value.items()])
        self._condition()
        if value is None:
            return expression.is_(None)
        return expression == self._scalar(kind, value, path)

    def _operator(
        self, expression: ColumnElement[Any], kind: Kind, op: Any, arg: Any, path: Path
    ) -> ColumnElement[bool] | None:
        if op not in OPERATORS:
            raise InvalidError(self._unknown_operator(op), field=path)
        if _is_wildcard(arg):
            return None
        if op == "in":
            if not isinstance(arg, list):
                raise InvalidError(f"in takes a list of values, got {type(arg).__name__}", field=path)
            return self._in(expression, kind, arg, path)
        self._condition()
        if op in ORDER:
            if kind == "bool":
                raise InvalidError(f"{op} cannot compare true and false; use equality", field=path)
            return ORDER[op](expression, self._scalar(kind, arg, path))
        if op == "ne":
            if arg is None:
                return expression.is_not(None)
            return expression != self._scalar(kind, arg, path)
        # contains / icontains: a case-insensitive substring, as upstream.
        if kind != "text":
            raise InvalidError(f"{op} applies to text fields only", field=path)
        return expression.ilike(_like_pattern(self._scalar(kind, arg, path)), escape=_LIKE_ESCAPE)

    def _in(
        self, expression: ColumnElement[Any], kind: Kind, items: list[Any], path: Path
    ) -> ColumnElement[bool] | None:
        if any(_is_wildcard(item) for item in items):
            return None
        self._condition()
        values = [self._scalar(kind, item, (*path, index)) for index, item in enumerate(items)]
        return expression.in_(values) if values else false()

    def _scalar(self, kind: Kind, value: Any, path: Path) -> Any:
        """``value`` checked against the field's kind, as the value to bind."""
        self._value()
        if kind == "datetime":
            if isinstance(value, datetime):
                return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            parsed = _parse_datetime(value) if isinstance(value, str) else None
            if parsed is not None:
                return parsed
        elif kind == "number":
            if _is_number(value):
                # Bound as NUMERIC: bound with an integer column's type, 3.5 would be cast to 4.
                return literal(value, Numeric())
        elif kind == "bool":
            if isinstance(value, bool):
                return value
        elif kind == "text":
            if isinstance(value, str):
                return self._text(value, path)
        elif isinstance(value, str):
            return self._text(value, path)
        elif isinstance(value, bool) or _is_number(value):
            return value
        raise InvalidError(
            f"expected {_EXPECTED[kind]}, got {type(value).__name__} {str(value)[:60]!r}", field=path
        )

    @staticmethod
    def _text(value: str, path: Path) -> str:
        if not storable(value):
            raise InvalidError("filter values must not contain NUL characters or lone surrogates", field=path)
        return value

    @staticmethod
    def _unknown_operator(op: Any) -> str:
        return (
            f"unknown operator {str(op)[:100]!r}; the operators are {', '.join(sorted(OPERATORS))} "
            "(an object with an operator key is an operator object: all its keys must be operators)"
        )

    # -- metadata -------------------------------------------------------------------------------------

    def _metadata(self, column: ColumnElement[Any], value: Any, path: Path) -> ColumnElement[bool] | None:
        if _is_wildcard(value):
            return None
        if not isinstance(value, dict):
            raise InvalidError(
                f"a metadata filter must be an object of keys to match, got {type(value).__name__}",
                field=path,
            )
        document = type_coerce(column, JSONB)
        if _is_operators(value):
            return _all([self._whole_metadata(document, op, arg, (*path, op)) for op, arg in value.items()])
        conditions: list[ColumnElement[bool] | None] = []
        contained = self._metadata_keys(document, value, path, (), conditions)
        if contained:
            self._condition()
            conditions.insert(0, document.contains(contained))
        return _all(conditions)

    def _whole_metadata(
        self, document: ColumnElement[Any], op: Any, arg: Any, path: Path
    ) -> ColumnElement[bool] | None:
        if op not in OPERATORS:
            raise InvalidError(self._unknown_operator(op), field=path)
        if _is_wildcard(arg):
            return None
        if op != "contains":
            raise InvalidError(
                f'{op} cannot apply to the metadata as a whole; name a key: {{"metadata": {{"key": '
                f'{{"{op}": ...}}}}}}',
                field=path,
            )
        if not isinstance(arg, dict):
            raise InvalidError(
                f"contains on the metadata takes an object to contain, got {type(arg).__name__}", field=path
            )
        self._condition()
        return document.contains(self._json(arg, path, 0))

    def _metadata_keys(
        self,
        document: ColumnElement[Any],
        node: dict[Any, Any],
        path: Path,
        keys: tuple[str, ...],
        conditions: list[ColumnElement[bool] | None],
    ) -> dict[str, Any]:
        """The containment document of ``node`` (its plain values, wildcards and operator objects left
        out); the conditions of its operator objects appended to ``conditions``."""
        contained: dict[str, Any] = {}
        for key, value in node.items():
            here = (*path, key)
            if not isinstance(key, str):
                raise InvalidError("metadata keys must be strings", field=here)
            self._text(key, here)
            if len(keys) + 1 > MAX_METADATA_DEPTH:
                raise _too_deep(here)
            if _is_wildcard(value):
                continue
            if _is_operators(value):
                conditions.extend(
                    self._metadata_operator(document, (*keys, key), op, arg, (*here, op))
                    for op, arg in value.items()
                )
            elif isinstance(value, dict):
                contained[key] = self._metadata_keys(document, value, here, (*keys, key), conditions)
            else:
                contained[key] = self._json(value, here, len(keys) + 1)
        return contained

    def _metadata_operator(
        self, document: ColumnElement[Any], keys: tuple[str, ...], op: Any, arg: Any, path: Path
    ) -> ColumnElement[bool] | None:
        if op not in OPERATORS:
            raise InvalidError(self._unknown_operator(op), field=path)
        if _is_wildcard(arg):
            return None
        target = document[keys[0]] if len(keys) == 1 else document[keys]
        if op == "in":
            if not isinstance(arg, list):
                raise InvalidError(f"in takes a list of values, got {type(arg).__name__}", field=path)
            if any(_is_wildcard(item) for item in arg):
                return None
            self._condition()
            for index, item in enumerate(arg):
                if not (item is None or isinstance(item, str | bool) or _is_number(item)):
                    raise InvalidError(
                        f"in takes strings, numbers, booleans or null, got {type(item).__name__}",
                        field=(*path, index),
                    )
            options = [
                document.contains(_nest(keys, self._json(item, (*path, index), len(keys))))
                for index, item in enumerate(arg)
            ]
            return or_(*options) if options else false()
        self._condition()
        if op == "ne":
            return target != literal(self._json(arg, path, len(keys)), JSONB)
        if op in ORDER:
            if _is_number(arg):
                json_type = "number"
            elif isinstance(arg, str):
                json_type = "string"
            else:
                raise InvalidError(
                    f"{op} compares with a number or a string, got {type(arg).__name__}", field=path
                )
            # jsonb orders numbers numerically and strings as text; the type test keeps a number from
            # comparing with a string (jsonb would order every string below every number).
            return and_(
                func.jsonb_typeof(target) == json_type,
                ORDER[op](target, literal(self._json(arg, path, len(keys)), JSONB)),
            )
        # contains / icontains: a string value, or a string element of a list, that holds the text.
        if not isinstance(arg, str):
            raise InvalidError(f"{op} takes a string, got {type(arg).__name__}", field=path)
        pattern = _like_pattern(self._text(arg, path))
        is_string = func.jsonb_typeof(target) == "string"
        # The elements of the value where it is a list (jsonb_array_elements fails on anything else).
        listed = case((func.jsonb_typeof(target) == "array", target), else_=literal([], JSONB))
        elements = func.jsonb_array_elements(listed).table_valued(column("value", JSONB))
        element = elements.c.value
        in_list = exists(
            select(literal(1))
            .select_from(elements)
            .where(
                func.jsonb_typeof(element) == "string", element[()].astext.ilike(pattern, escape=_LIKE_ESCAPE)
            )
        )
        return or_(and_(is_string, target.astext.ilike(pattern, escape=_LIKE_ESCAPE)), in_list)

    def _json(self, value: Any, path: Path, depth: int) -> Any:
        """``value``, found ``depth`` keys deep in metadata, checked to be plain JSON PostgreSQL can hold;
        its scalars counted as values."""
        stack: list[tuple[Any, Path, int]] = [(value, path, depth)]
        while stack:
            item, here, level = stack.pop()
            if isinstance(item, dict | list):
                inner = item.items() if isinstance(item, dict) else enumerate(item)
                for key, child in inner:
                    if isinstance(item, dict) and not isinstance(key, str):
                        raise InvalidError("JSON object keys must be strings", field=here)
                    if isinstance(key, str):
                        self._text(key, (*here, key))
                    if level + 1 > MAX_METADATA_DEPTH:
                        raise _too_deep((*here, key))
                    stack.append((child, (*here, key), level + 1))
                continue
            self._value()
            if isinstance(item, str):
                self._text(item, here)
            elif not (item is None or isinstance(item, bool) or _is_number(item)):
                raise InvalidError(f"expected a JSON value, got {type(item).__name__}", field=here)
        return value


def _too_deep(path: Path) -> InvalidError:
    return InvalidError(f"metadata filters reach at most {MAX_METADATA_DEPTH} keys deep", field=path)


def _nest(keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for keys ``("a", "b")``."""
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    result: dict[str, Any] = nested
    return result
