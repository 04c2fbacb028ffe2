"""Our OpenAPI document against Honcho v3's (v3.0.12): every operation Rapport serves, with the same
parameters, bodies, success statuses and schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.api.openapi_diff import differences, operations

# A structural copy of Honcho v3.0.12's docs/v3/openapi.json (origin in its info.x-origin), by vendor.py.
CONTRACT = Path(__file__).parent / "contracts" / "honcho-v3.structure.json"

# Operations of the contract not served yet, each named with the issue that brings it. The test fails
# when one of them is served (so this list only shrinks) and when any other one is missing or differs.
_W = "/v3/workspaces/{workspace_id}"
NOT_YET: set[tuple[str, str]] = set()
# Optional request fields the v3.0.12 server takes that its document (regenerated for 3.0.11) lacks
# (shared/contract/README.md): served, and taken out of our document before the comparison.
NEWER_FIELDS = {("DialecticOptions", "filters"), ("DialecticOptions", "response_format")}


def without_newer_fields(ours: dict[str, Any]) -> dict[str, Any]:
    schemas = ours["components"]["schemas"]
    for name, field in NEWER_FIELDS:
        # FastAPI names a schema by its module as well when v1 has one of the same name
        v3 = [
            s
            for key, s in schemas.items()
            if key.split("__")[-1] == name and field in s.get("properties", {})
        ]
        assert len(v3) == 1, f"{name}.{field} is not served"
        assert field not in v3[0].get("required", []), f"{name}.{field} must stay optional"
        del v3[0]["properties"][field]
    return ours


async def test_every_served_v3_operation_matches_the_contract(client: httpx.AsyncClient) -> None:
    contract = json.loads(CONTRACT.read_text())
    ours = without_newer_fields((await client.get("/openapi.json")).json())
    assert len(operations(contract)) == 46
    served = {key for key in operations(contract) if key in operations(ours)}
    assert not (served & NOT_YET), f"served now, take them off NOT_YET: {sorted(served & NOT_YET)}"
    found = [d for d in differences(contract, ours) if not any(d.startswith(f"{m} {p}:") for m, p in NOT_YET)]
    assert found == []
