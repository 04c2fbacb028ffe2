"""v3 peers: get-or-create, list, update, and the sessions of a peer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response

from deployments.api.auth import Key
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import check_creates, v3_creator, v3_key
from deployments.api.v3.params import PageNumber, PageSize, PeerId, Reverse, WorkspaceId
from pipelines import representation
from storage import conclusions, dreams, v3

router = APIRouter(prefix="/v3/workspaces/{workspace_id}/peers", tags=["peers"])
Target = Annotated[
    str | None, Query(description="The peer the card or representation is about (default: the peer itself)")
]


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
    return schemas.page(schemas.Peer, [schemas.Peer.of(row, workspace_id) for row in found.items], found)


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
    return schemas.page(
        schemas.Session, [schemas.Session.of(row, workspace_id) for row in found.items], found
    )


@router.get("/{peer_id}/card", response_model=schemas.PeerCardResponse, dependencies=[Depends(v3_key)])
async def get_peer_card(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    target: Target = None,
) -> schemas.PeerCardResponse:
    """Get the card a Peer keeps about a target (itself by default); null if it keeps none"""
    card = await memory.run(conclusions.card_of, workspace_id, peer_id, target)
    return schemas.PeerCardResponse(peer_card=card)


@router.put("/{peer_id}/card", response_model=schemas.PeerCardResponse, dependencies=[Depends(v3_key)])
async def set_peer_card(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    card: Annotated[schemas.PeerCardSet, Body(description="Peer card content")],
    target: Target = None,
) -> schemas.PeerCardResponse:
    """Set the card a Peer keeps about a target (itself by default), replacing it"""
    lines = await memory.run(conclusions.set_card, workspace_id, peer_id, target, card.peer_card)
    return schemas.PeerCardResponse(peer_card=lines)


@router.post(
    "/{peer_id}/representation", response_model=schemas.RepresentationResponse, dependencies=[Depends(v3_key)]
)
async def get_representation(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    options: Annotated[schemas.PeerRepresentationGet, Body(description="Options for what to include")],
) -> schemas.RepresentationResponse:
    """Get what a Peer holds about a target (itself by default), from the stored conclusions

    A section per level, each conclusion dated; the newest first picked, and those matching
    search_query, or drawn most often (include_most_frequent), ahead of them."""
    ask = representation.Ask(
        search_query=options.search_query,
        search_top_k=options.search_top_k,
        search_max_distance=options.search_max_distance,
        include_most_frequent=bool(options.include_most_frequent),
        max_conclusions=options.max_conclusions or 25,
        session_ids=await _sessions(memory, workspace_id, options.session_id),
    )
    text = await representation.representation(memory, workspace_id, peer_id, options.target, ask)
    return schemas.RepresentationResponse(representation=text)


@router.get("/{peer_id}/context", response_model=schemas.PeerContext, dependencies=[Depends(v3_key)])
async def get_peer_context(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    target: Target = None,
    search_query: Annotated[str | None, Query(description="Conclusions relevant to this come first")] = None,
    search_top_k: Annotated[
        int | None, Query(ge=1, le=100, description="Conclusions found by search_query")
    ] = None,
    search_max_distance: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="How far a conclusion may be from search_query")
    ] = None,
    include_most_frequent: Annotated[
        bool, Query(description="Whether to include the most frequently derived conclusions")
    ] = True,
    max_conclusions: Annotated[
        int | None, Query(ge=1, le=100, description="Most conclusions to include")
    ] = None,
) -> schemas.PeerContext:
    """Get a Peer's context about a target (itself by default): its representation and card"""
    ask = representation.Ask(
        search_query=search_query,
        search_top_k=search_top_k,
        search_max_distance=search_max_distance,
        include_most_frequent=include_most_frequent,
        max_conclusions=max_conclusions or 100,
    )
    card = await memory.run(conclusions.card_of, workspace_id, peer_id, target)
    text = await representation.representation(memory, workspace_id, peer_id, target, ask)
    return schemas.PeerContext(
        peer_id=peer_id, target_id=target or peer_id, representation=text, peer_card=card
    )


@router.get(
    "/{peer_id}/history",
    response_model=list[schemas.SupersededConclusion],
    dependencies=[Depends(v3_key)],
)
async def get_history(
    memory: Mem,
    workspace_id: WorkspaceId,
    peer_id: PeerId,
    target: Target = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most conclusions to return")] = 100,
) -> list[schemas.SupersededConclusion]:
    """The conclusions a Peer held about a target (itself by default) that no longer hold (a Rapport
    extension)

    What dreams superseded, latest first, each with the conclusion that replaced it: a contradicted one
    with the newer that holds now, a near-duplicate with the one it was merged into. Context,
    representations and chat read only what still holds; the conclusions list shows both."""
    rows = await memory.run(dreams.history_in, workspace_id, peer_id, target, limit=limit)
    return [schemas.SupersededConclusion.of(row) for row in rows]


async def _sessions(memory: Mem, workspace_id: str, session: str | None) -> list[str] | None:
    if session is None:
        return None
    return [(await memory.run(v3.session_in, workspace_id, session)).id]
