"""A caller's JSON Schema (v3 chat's ``response_format``) as a pydantic model, so that the answer is
asked for and checked as any structured output is (``LLMClient.structured``).

Only a plain subset is taken, the one a model can be held to: objects with ``properties`` and
``required`` (and ``additionalProperties: false``), arrays with ``items``, strings, numbers, integers,
booleans, null, ``enum`` / ``const``, a list of types, ``anyOf`` / ``oneOf``, and ``$ref`` to the
root's ``$defs`` / ``definitions`` (not recursive). Constraint keywords (``minItems``, ``maxLength``,
``pattern``, ...) are shown to the model but not enforced. Anything else is refused with the path where
it stands (``SchemaError``), never ignored: a schema the answer cannot be held to is a 422, not a
surprise later. The root must be an object; the schema is bounded in depth and size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

MAX_DEPTH = 8
MAX_NODES = 300
MAX_SCHEMA_CHARS = 20_000

_SCALARS: dict[str, Any] = {
    "string": str,
    "number": float,
    "integer": int,
    "boolean": bool,
    "null": type(None),
}
_HINTS = frozenset(
    (  # noqa: SIM905
        "minItems maxItems minLength maxLength minimum maximum exclusiveMinimum exclusiveMaximum "
        "multipleOf pattern format minProperties maxProperties uniqueItems"
    ).split()
)
_NOTES = frozenset(("title", "description", "default", "examples", "$schema", "$id", "$comment"))
_SHAPE = frozenset(
    "type properties required additionalProperties items enum const anyOf oneOf $ref".split()  # noqa: SIM905
)


class SchemaError(ValueError):
    """A schema outside the subset, with where in it the problem is."""


@dataclass
class _Walk:
    defs: dict[str, Any]
    nodes: int = 0
    models: int = 0
    resolving: list[str] = field(default_factory=list)


def model_of(schema: Any) -> type[BaseModel]:
    """The pydantic model of ``schema``; SchemaError if it is outside the subset."""
    if not isinstance(schema, dict):
        raise SchemaError("response_format must be a JSON Schema object")
    if len(repr(schema)) > MAX_SCHEMA_CHARS:
        raise SchemaError(f"response_format is too large (at most about {MAX_SCHEMA_CHARS:,} characters)")
    schema = dict(schema)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.pop(key, None)
        if found is None:
            continue
        if not isinstance(found, dict):
            raise SchemaError(f"{key} must be an object of schemas")
        defs.update({f"#/{key}/{name}": value for name, value in found.items()})
    if schema.get("type") != "object":
        raise SchemaError('the root of response_format must be {"type": "object", ...}')
    walk = _Walk(defs)
    model = _type_of(schema, walk, "$", 0)
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


def _type_of(node: Any, walk: _Walk, path: str, depth: int) -> Any:
    if not isinstance(node, dict):
        raise SchemaError(f"{path}: a schema must be an object")
    walk.nodes += 1
    if walk.nodes > MAX_NODES:
        raise SchemaError(f"response_format has more than {MAX_NODES} schemas in it")
    if depth > MAX_DEPTH:
        raise SchemaError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    unknown = set(node) - _SHAPE - _HINTS - _NOTES
    if unknown:
        raise SchemaError(f"{path}: unsupported keyword(s) {sorted(unknown)}")
    if "$ref" in node:
        return _ref(node["$ref"], walk, path, depth)
    if "const" in node:
        return Literal[_scalar(node["const"], f"{path}.const")]
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{path}.enum: a non-empty list of values")
        return Literal[tuple(_scalar(v, f"{path}.enum") for v in values)]
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = node[key]
            if not isinstance(options, list) or not options:
                raise SchemaError(f"{path}.{key}: a non-empty list of schemas")
            kinds = [_type_of(o, walk, f"{path}.{key}[{i}]", depth + 1) for i, o in enumerate(options)]
            return Union[tuple(kinds)]  # noqa: UP007  (a runtime list of types)
    kind = node.get("type")
    if isinstance(kind, list):
        if not kind:
            raise SchemaError(f"{path}.type: a type or a non-empty list of types")
        kinds = [_type_of({**node, "type": k}, walk, path, depth) for k in kind]
        return Union[tuple(kinds)]  # noqa: UP007
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        if "items" not in node:
            return list[Any]
        return list[_type_of(node["items"], walk, f"{path}.items", depth + 1)]  # type: ignore[misc]
    if kind == "object":
        return _object(node, walk, path, depth)
    if kind is None:
        raise SchemaError(f"{path}: give a type (or enum, const, anyOf, $ref)")
    raise SchemaError(f"{path}.type: unsupported type {kind!r}")


def _scalar(value: Any, path: str) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise SchemaError(f"{path}: only strings, numbers, booleans and null")
    return value


def _ref(ref: Any, walk: _Walk, path: str, depth: int) -> Any:
    if not isinstance(ref, str) or ref not in walk.defs:
        raise SchemaError(f"{path}.$ref: {ref!r} is not among the root's $defs / definitions")
    if ref in walk.resolving:
        raise SchemaError(f"{path}.$ref: {ref!r} refers to itself (recursive schemas are not supported)")
    walk.resolving.append(ref)
    try:
        return _type_of(walk.defs[ref], walk, ref, depth + 1)
    finally:
        walk.resolving.pop()


def _object(node: dict[str, Any], walk: _Walk, path: str, depth: int) -> Any:
    properties = node.get("properties")
    extra = node.get("additionalProperties", True)
    if not isinstance(extra, bool):
        raise SchemaError(f"{path}.additionalProperties: only true or false")
    if properties is None:
        return dict[str, Any]
    if not isinstance(properties, dict):
        raise SchemaError(f"{path}.properties: an object of schemas")
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{path}.required: a list of property names")
    missing = set(required) - set(properties)
    if missing:
        raise SchemaError(f"{path}.required: {sorted(missing)} not among the properties")
    fields: dict[str, Any] = {}
    for i, (name, schema) in enumerate(properties.items()):
        kind = _type_of(schema, walk, f"{path}.properties.{name}", depth + 1)
        notes = {k: schema[k] for k in ("description", "title") if isinstance(schema.get(k), str)}
        hints = {k: schema[k] for k in _HINTS if k in schema}
        # Any property name (spaces, dashes, leading underscores): the field is named by position and
        # read and written under its own name as the alias. An optional one is left out when absent.
        default = ... if name in required else None
        fields[f"field_{i}"] = (
            kind,
            Field(default, alias=name, json_schema_extra=hints or None, **notes),  # type: ignore[pydantic-field]
        )
    walk.models += 1
    config = ConfigDict(extra="forbid" if extra is False else "ignore", populate_by_name=False)
    title = node.get("title")
    name = title if isinstance(title, str) and title.isidentifier() else f"Answer{walk.models}"
    return create_model(name, __config__=config, **fields)
