"""v3 search: the hybrid message search of Rapport (semantic and BM25, fused) over a workspace, what a
peer said, or a session; v3's filters narrow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import PeerId, SessionId, WorkspaceId
from storage import v3

router = APIRouter(prefix="/v3/workspaces/{workspace_id}", dependencies=[Depends(v3_key)])
Options = Annotated[schemas.MessageSearchOptions, Body(description="Message search parameters")]


async def _search(
    memory: Mem, workspace_id: str, options: schemas.MessageSearchOptions, **where: str
) -> list[schemas.Message]:
    scope = await memory.run(v3.search_scope, workspace_id, filters=options.filters, **where)
    hits = await memory.search_messages(
        app_id=scope.app_id,
        user_id=None,
        session_id=scope.session_id,
        query=options.query,
        top_k=options.limit,
        conditions=scope.conditions,
        scope_checked=True,
    )
    rows = [row for row, _ in hits]
    peers, sessions = await memory.run(v3.names_of, rows)
    return [
        schemas.Message.of(row, workspace_id, sessions.get(row.session_id, ""), peers.get(row.peer_id, ""))
        for row in rows
    ]


@router.post("/search", response_model=list[schemas.Message], tags=["workspaces"])
async def search_workspace(memory: Mem, workspace_id: WorkspaceId, options: Options) -> list[schemas.Message]:
    """Search a Workspace's messages, best first (new messages are searchable once indexed: seconds)"""
    return await _search(memory, workspace_id, options)


@router.post("/peers/{peer_id}/search", response_model=list[schemas.Message], tags=["peers"])
async def search_peer(
    memory: Mem, workspace_id: WorkspaceId, peer_id: PeerId, options: Options
) -> list[schemas.Message]:
    """Search what a Peer said, in every session, best first"""
    return await _search(memory, workspace_id, options, peer=peer_id)


@router.post("/sessions/{session_id}/search", response_model=list[schemas.Message], tags=["sessions"])
async def search_session(
    memory: Mem, workspace_id: WorkspaceId, session_id: SessionId, options: Options
) -> list[schemas.Message]:
    """Search a Session's messages, best first"""
    return await _search(memory, workspace_id, options, session=session_id)
