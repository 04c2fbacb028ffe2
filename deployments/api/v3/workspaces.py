"""v3 workspaces: get-or-create, list (admin), update, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response

from deployments.api.auth import Key
from deployments.api.errors import responses
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import check_creates, require_v3_admin, v3_creator, v3_key
from deployments.api.v3.params import PageNumber, PageSize, Reverse, WorkspaceId
from storage import v3, workspaces

router = APIRouter(prefix="/v3/workspaces", tags=["workspaces"])


@router.post("", response_model=schemas.Workspace, responses={201: {"model": schemas.Workspace}})
async def get_or_create_workspace(
    memory: Mem,
    response: Response,
    workspace: Annotated[schemas.WorkspaceCreate, Body(description="Workspace creation parameters")],
    key: Annotated[Key, Depends(v3_creator)],
) -> schemas.Workspace:
    """Get a Workspace by ID, or create it (201) if it does not exist

    A workspace is an app of the v1 API, by name. An existing workspace is returned as it is."""
    check_creates(key, workspace=workspace.id)
    row, created = await memory.run(
        workspaces.get_or_create_workspace,
        workspace.id,
        metadata=workspace.metadata,
        configuration=schemas.configuration(workspace.configuration),
    )
    response.status_code = 201 if created else 200
    return schemas.Workspace.of(row)


@router.post(
    "/list", response_model=schemas.Page[schemas.Workspace], dependencies=[Depends(require_v3_admin)]
)
async def get_all_workspaces(
    memory: Mem,
    options: Annotated[
        schemas.WorkspaceGet | None, Body(description="Filtering options for the workspaces list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Workspace]:
    """Get all Workspaces (admin only)"""
    found = await memory.run(
        workspaces.list_workspaces,
        filters=options.filters if options else None,
        reverse=reverse,
        page=page,
        size=size,
    )
    return schemas.page(schemas.Workspace, [schemas.Workspace.of(row) for row in found.items], found)


@router.put("/{workspace_id}", response_model=schemas.Workspace, dependencies=[Depends(v3_key)])
async def update_workspace(
    memory: Mem,
    workspace_id: WorkspaceId,
    workspace: Annotated[schemas.WorkspaceUpdate, Body(description="Updated workspace parameters")],
) -> schemas.Workspace:
    """Update a Workspace: new metadata replaces the old, configuration is merged key by key"""
    row = await memory.run(
        workspaces.update_workspace,
        workspace_id,
        metadata=workspace.metadata,
        configuration=schemas.configuration(workspace.configuration),
    )
    return schemas.Workspace.of(row)


@router.delete(
    "/{workspace_id}",
    status_code=202,
    response_model=None,
    dependencies=[Depends(v3_key)],
    responses=responses(409),
)
async def delete_workspace(memory: Mem, workspace_id: WorkspaceId) -> dict[str, Any]:
    """Delete a Workspace and everything in it

    Refused (409) while the workspace has active sessions: delete them first. The deletion is the
    erasure of the app: every row in PostgreSQL at once, and the search index's entries right after."""
    app = await memory.run(v3.workspace_deletable, workspace_id)
    await memory.erase_app(app.id)
    return {"message": "Workspace deletion accepted"}
