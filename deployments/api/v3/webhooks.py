"""v3 webhooks: a workspace's endpoints, and a test event to them (pipelines/webhooks.py sends events)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response

from deployments.api.errors import responses
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import PageNumber, PageSize, WorkspaceId
from storage import webhooks

router = APIRouter(
    prefix="/v3/workspaces/{workspace_id}/webhooks", tags=["webhooks"], dependencies=[Depends(v3_key)]
)


@router.post(
    "",
    response_model=schemas.WebhookEndpoint,
    responses={201: {"model": schemas.WebhookEndpoint}, **responses(409)},
)
async def get_or_create_webhook_endpoint(
    request: Request,
    memory: Mem,
    response: Response,
    workspace_id: WorkspaceId,
    endpoint: Annotated[schemas.WebhookEndpointCreate, Body()],
) -> schemas.WebhookEndpoint:
    """Add a webhook endpoint to the Workspace (201), or get it if it is there (200)

    http or https, not at a local or private address; at most webhook.max_endpoints (10) a workspace
    (409 past that). Events are sent only when webhook.secret is set, signed with it."""
    most = request.app.state.settings.webhook.max_endpoints
    row, created = await memory.run(webhooks.add_endpoint, workspace_id, endpoint.url, most=most)
    response.status_code = 201 if created else 200
    return schemas.WebhookEndpoint.of(row, workspace_id)


@router.get("", response_model=schemas.Page[schemas.WebhookEndpoint])
async def list_webhook_endpoints(
    memory: Mem, workspace_id: WorkspaceId, page: PageNumber = 1, size: PageSize = 50
) -> schemas.Page[schemas.WebhookEndpoint]:
    """List the Workspace's webhook endpoints"""
    found = await memory.run(webhooks.list_endpoints, workspace_id, page=page, size=size)
    return schemas.page(
        schemas.WebhookEndpoint, [schemas.WebhookEndpoint.of(row, workspace_id) for row in found.items], found
    )


@router.get("/test")
async def test_emit(request: Request, memory: Mem, workspace_id: WorkspaceId) -> None:
    """Send a test.event to the Workspace's endpoints (queued, then sent in the background; nothing
    without webhook.secret)"""
    sender = request.app.state.webhooks

    async def record(db: Any, ws: str) -> int:
        return int(await sender.record(db, await webhooks.test_event(db, ws)))

    if await memory.run(record, workspace_id):
        sender.nudge(memory.database)


@router.delete("/{endpoint_id}", status_code=204)
async def delete_webhook_endpoint(
    memory: Mem,
    workspace_id: WorkspaceId,
    endpoint_id: Annotated[str, Path(description="Webhook endpoint ID")],
) -> Response:
    """Delete a webhook endpoint"""
    await memory.run(webhooks.delete_endpoint, workspace_id, endpoint_id)
    return Response(status_code=204)
