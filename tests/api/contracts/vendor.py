"""Make the structural copy of an upstream OpenAPI document that the tests compare against.

Keeps what decides what a client may send and will get back: paths, methods, operation ids,
parameters, request bodies, responses, security and the component schemas they refer to. Drops the
prose (titles, descriptions, summaries, examples, info text). Run it when the contract changes:

    python -m tests.api.contracts.vendor ../shared/contract/honcho-v1.1.0-openapi.json \
        tests/api/contracts/honcho-v1.1.0.structure.json --origin "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PROSE = {"title", "description", "summary", "examples", "example", "externalDocs", "x-codeSamples"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}


def _strip(node: Any, *, in_properties: bool = False) -> Any:
    """Drop prose keys everywhere except where they name a property (a field called 'title' stays)."""
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: _strip(value, in_properties=key == "properties" and not in_properties)
        for key, value in node.items()
        if in_properties or key not in PROSE
    }


def structure(doc: dict[str, Any], origin: str) -> dict[str, Any]:
    paths = {
        path: {
            method: _strip(op)
            for method, op in item.items()
            if method in HTTP_METHODS or method == "parameters"
        }
        for path, item in doc["paths"].items()
    }
    components = doc.get("components", {})
    return {
        "openapi": doc["openapi"],
        "info": {"title": doc["info"]["title"], "version": doc["info"]["version"], "x-origin": origin},
        "paths": paths,
        "components": {
            key: _strip(components[key])
            for key in ("schemas", "securitySchemes", "parameters")
            if key in components
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument(
        "--origin", required=True, help="where the source came from (repository, tag, commit, path)"
    )
    args = parser.parse_args()
    copy = structure(json.loads(args.source.read_text()), args.origin)
    args.target.write_text(json.dumps(copy, indent=1, sort_keys=True) + "\n")
    print(f"{args.target}: {sum(len(item) for item in copy['paths'].values())} operations")


if __name__ == "__main__":
    main()
