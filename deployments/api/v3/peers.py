"""v3 peers: get-or-create, list, update, and the sessions of a peer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response

from deployments.api.auth import Key
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import check_creates, v3_creator, v3_key
from deployments.api.v3.params import PageNumber, PageSize, PeerId, Reverse, WorkspaceId
from storage import v3

router = APIRouter(prefix="/v3/workspaces/{workspace_id}/peers", tags=["peers"])


@router.post("", response_model=schemas.Peer, responses={201: {"model": schemas.Peer}})
async def get_or_create_peer(
    memory: Mem,
    response: Response,
    workspace_id: WorkspaceId,
    peer: Annotated[schemas.PeerCreate, Body(description="Peer creation parameters")],
    key: Annotated[Key, Depends(v3_creator)],
) -> schemas.Peer:
    """Get a Peer by ID, or create it (201) if it does not exist

    A peer is a user of the v1 API, by name. Metadata or configuration given for an existing peer
    replaces its own (as Honcho does)."""
    check_creates(key, workspace=workspace_id, peer=peer.id)
    row, created = await memory.run(
        v3.get_or_create_peer_in,
        workspace_id,
        peer.id,
        metadata=peer.metadata,
        configuration=peer.configuration,
    )
    response.status_code = 201 if created else 200
    return schemas.Peer.of(row, workspace_id)


@router.post("/list", response_model=schemas.Page[schemas.Peer], dependencies=[Depends(v3_key)])
async def get_peers(
    memory: Mem,
    workspace_id: WorkspaceId,
    options: Annotated[
        schemas.PeerGet | None, Body(description="Filtering options for the peers list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Peer]:
    """Get all Peers for a Workspace"""
    found = await memory.run(
        v3.list_peers_in,
        workspace_id,
        filters=options.filters if options else None,
        reverse=reverse,
        page=page,
        size=size,
    )
    return schemas.page([schemas.Peer.of(row, workspace_id) for row in found.items], found)


@router.put("/{peer_id}", response_model=schemas.Peer, dependencies=[Depends(v3_key)])
async def update_peer(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    peer: Annotated[schemas.PeerUpdate, Body(description="Updated peer parameters")],
) -> schemas.Peer:
    """Update a Peer's metadata and/or configuration (each replaces the old one when given)"""
    row = await memory.run(
        v3.update_peer_in, workspace_id, peer_id, metadata=peer.metadata, configuration=peer.configuration
    )
    return schemas.Peer.of(row, workspace_id)


@router.post(
    "/{peer_id}/sessions", response_model=schemas.Page[schemas.Session], dependencies=[Depends(v3_key)]
)
async def get_sessions_for_peer(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    options: Annotated[
        schemas.SessionGet | None, Body(description="Filtering options for the sessions list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Session]:
    """Get the Sessions a Peer is or was a member of"""
    found = await memory.run(
        v3.sessions_of_peer_in,
        workspace_id,
        peer_id,
        filters=options.filters if options else None,
        reverse=reverse,
        page=page,
        size=size,
    )
    return schemas.page([schemas.Session.of(row, workspace_id) for row in found.items], found)
