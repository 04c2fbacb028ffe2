"""Our OpenAPI document against Honcho v1.1.0's: every operation, with the same schemas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.api.openapi_diff import differences, operations

RELATIVE = Path("shared/contract/honcho-v1.1.0-openapi.json")


def _contract() -> Path:
    """The contract lives beside the checkout (../shared); HONCHO_OPENAPI may point elsewhere."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(os.environ["HONCHO_OPENAPI"])] if os.environ.get("HONCHO_OPENAPI") else []
    candidates += [repo.parent / RELATIVE, Path("/work") / RELATIVE]
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(f"Honcho's OpenAPI document not found in {[str(c) for c in candidates]}; set HONCHO_OPENAPI")


CONTRACT = _contract()


async def test_every_contract_operation_is_served_with_the_same_schemas(client: httpx.AsyncClient) -> None:
    contract = json.loads(CONTRACT.read_text())
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    ours = response.json()
    assert len(operations(contract)) == 41
    assert differences(contract, ours) == []
    assert ("GET", "/health") in operations(ours)


def test_the_diff_catches_a_changed_schema() -> None:
    contract = json.loads(CONTRACT.read_text())
    changed = json.loads(CONTRACT.read_text())
    changed["components"]["schemas"]["AppCreate"]["properties"]["name"]["maxLength"] = 50
    del changed["paths"]["/v1/keys"]
    found = differences(contract, changed)
    assert any("POST /v1/apps: request body" in d for d in found)
    assert "POST /v1/keys: missing" in found
