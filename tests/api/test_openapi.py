"""Our OpenAPI document against Honcho v1.1.0's: every operation, with the same schemas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.api.openapi_diff import differences, operations

# A structural copy of Honcho v1.1.0's document (origin in its info.x-origin), made by contracts/vendor.py.
CONTRACT = Path(__file__).parent / "contracts" / "honcho-v1.1.0.structure.json"


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


async def test_every_error_an_operation_can_answer_is_declared(client: httpx.AsyncClient) -> None:
    ours = (await client.get("/openapi.json")).json()
    error = {"$ref": "#/components/schemas/ErrorDetail"}
    for (method, path), op in operations(ours).items():
        responses = op["responses"]
        name = f"{method} {path}"
        unavailable = responses["503"]
        assert unavailable["content"]["application/json"]["schema"] == error, name
        assert "Retry-After" in unavailable["headers"], name
        if path.startswith("/v1/"):
            assert responses["401"]["content"]["application/json"]["schema"] == error, name
        if "{" in path and "get_or_create" not in path:
            assert "404" in responses, name
        if "requestBody" in op:
            assert "413" in responses and "422" in responses, name
        if "422" in responses:
            schema = responses["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/HTTPValidationError"}, name
    assert "409" in operations(ours)[("POST", "/v1/apps")]["responses"]
    assert "405" in operations(ours)[("POST", "/v1/keys")]["responses"]
