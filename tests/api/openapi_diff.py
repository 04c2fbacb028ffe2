"""Compare two OpenAPI documents operation by operation, after resolving references."""

from __future__ import annotations

from typing import Any

IGNORED_KEYS = {"title", "description", "examples", "example"}


def _resolve(doc: dict[str, Any], node: Any, seen: tuple[str, ...] = ()) -> Any:
    """Inline every $ref and drop the keys that do not change what a schema accepts or returns."""
    if isinstance(node, list):
        return [_resolve(doc, item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            return {"$recursive": ref}
        target: Any = doc
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return _resolve(doc, target, (*seen, ref))
    return {k: _resolve(doc, v, seen) for k, v in node.items() if k not in IGNORED_KEYS}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "delete", "patch"}
    }


def _parameters(doc: dict[str, Any], op: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (p["name"], p["in"]): {"required": p.get("required", False), "schema": _resolve(doc, p.get("schema"))}
        for p in op.get("parameters", [])
    }


def _body(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    body = op.get("requestBody")
    if body is None:
        return None
    return {
        "required": body.get("required", False),
        **{ctype: _resolve(doc, content["schema"]) for ctype, content in body["content"].items()},
    }


def _success(op: dict[str, Any]) -> str:
    """The status of an operation's success: 200, else its lowest 2xx (201 created, 202, 204)."""
    codes = sorted(code for code in op["responses"] if str(code).startswith("2"))
    return "200" if "200" in codes else codes[0]


def _ok_response(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    content = op["responses"][_success(op)].get("content", {})
    return {ctype: _resolve(doc, c.get("schema")) for ctype, c in content.items()}


def differences(contract: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Every way an operation of ``contract`` is missing from, or differs in, ``ours``."""
    found: list[str] = []
    our_ops = operations(ours)
    for key, op in operations(contract).items():
        name = f"{key[0]} {key[1]}"
        mine = our_ops.get(key)
        if mine is None:
            found.append(f"{name}: missing")
            continue
        if mine.get("operationId") != op.get("operationId"):
            found.append(f"{name}: operationId {mine.get('operationId')} != {op.get('operationId')}")
        if _parameters(ours, mine) != _parameters(contract, op):
            found.append(f"{name}: parameters {_parameters(ours, mine)} != {_parameters(contract, op)}")
        if _body(ours, mine) != _body(contract, op):
            found.append(f"{name}: request body {_body(ours, mine)} != {_body(contract, op)}")
        if _success(mine) != _success(op):
            found.append(f"{name}: success status {_success(mine)} != {_success(op)}")
        elif _ok_response(ours, mine) != _ok_response(contract, op):
            found.append(
                f"{name}: {_success(op)} response {_ok_response(ours, mine)} != {_ok_response(contract, op)}"
            )
        if mine.get("security") != op.get("security"):
            found.append(f"{name}: security {mine.get('security')} != {op.get('security')}")
    return found
