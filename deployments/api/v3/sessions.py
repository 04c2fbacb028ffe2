"""v3 sessions: get-or-create with peers and configuration, list, update, delete, clone, and members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response

from deployments.api.auth import Key
from deployments.api.errors import invalid_input
from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import check_creates, v3_creator, v3_key
from deployments.api.v3.params import PageNumber, PageSize, PeerId, Reverse, SessionId, WorkspaceId
from models.llm.client import estimate_tokens
from pipelines import representation
from storage import conclusions, v3

router = APIRouter(prefix="/v3/workspaces/{workspace_id}/sessions", tags=["sessions"])
session_router = APIRouter(
    prefix="/v3/workspaces/{workspace_id}/sessions", tags=["sessions"], dependencies=[Depends(v3_key)]
)

CONTEXT_TOKENS_MAX = 100_000  # Honcho v3's GET_CONTEXT_MAX_TOKENS

PeerConfigs = Annotated[
    dict[str, schemas.SessionPeerConfig], Body(description="List of peer IDs to add to the session")
]


def _pairs(peers: dict[str, schemas.SessionPeerConfig]) -> dict[str, Any]:
    return {name: config.pair() for name, config in peers.items()}


@router.post("", response_model=schemas.Session, responses={201: {"model": schemas.Session}})
async def get_or_create_session(
    memory: Mem,
    response: Response,
    workspace_id: WorkspaceId,
    session: Annotated[schemas.SessionCreate, Body(description="Session creation parameters")],
    key: Annotated[Key, Depends(v3_creator)],
) -> schemas.Session:
    """Get a Session by ID, or create it (201) if it does not exist

    The workspace and the peers named are made if missing; the peers join the session. For an existing
    session, given metadata replaces its own and configuration is merged into it key by key."""
    check_creates(key, workspace=workspace_id, session=session.id)
    row, created = await memory.run(
        v3.get_or_create_session_in,
        workspace_id,
        session.id,
        metadata=session.metadata,
        configuration=schemas.configuration(session.configuration),
        peers=_pairs(session.peers or {}),
    )
    response.status_code = 201 if created else 200
    return schemas.Session.of(row, workspace_id)


@session_router.post("/list", response_model=schemas.Page[schemas.Session])
async def get_sessions(
    memory: Mem,
    workspace_id: WorkspaceId,
    options: Annotated[
        schemas.SessionGet | None, Body(description="Filtering and pagination options for the sessions list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Session]:
    """Get the active Sessions of a Workspace (v1 sessions included: their name is their id)"""
    found = await memory.run(
        v3.list_sessions_in,
        workspace_id,
        filters=options.filters if options else None,
        reverse=reverse,
        page=page,
        size=size,
    )
    return schemas.page(
        schemas.Session, [schemas.Session.of(row, workspace_id) for row in found.items], found
    )


@session_router.put("/{session_id}", response_model=schemas.Session)
async def update_session(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    session: Annotated[schemas.SessionUpdate, Body(description="Updated session parameters")],
) -> schemas.Session:
    """Update a Session's metadata (replaced) and/or configuration (merged key by key)"""
    row = await memory.run(
        v3.update_session_in,
        workspace_id,
        session_id,
        metadata=session.metadata,
        configuration=schemas.configuration(session.configuration),
    )
    return schemas.Session.of(row, workspace_id)


@session_router.delete("/{session_id}", status_code=202, response_model=None)
async def delete_session(memory: Mem, workspace_id: WorkspaceId, session_id: SessionId) -> dict[str, Any]:
    """Delete a Session and everything in it

    Its messages, their derivation work and its members go from PostgreSQL at once, and from the
    search index right after (through the outbox, so a crash between the two loses nothing)."""
    app = await memory.run(v3.session_in, workspace_id, session_id)
    await memory.delete_session(app.app_id, session_id)
    return {"message": "Session deleted successfully"}


@session_router.post("/{session_id}/clone", response_model=schemas.Session, status_code=201)
async def clone_session(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    message_id: Annotated[str | None, Query(description="Message ID to cut off the clone at")] = None,
) -> schemas.Session:
    """Clone a Session, optionally up to a message (inclusive)

    The copy gets a new id (its name), the original's metadata, configuration and present members, and
    copies of up to 5,000 messages, searchable once indexed."""
    row = await memory.run(v3.clone_session_in, workspace_id, session_id, message_id=message_id)
    return schemas.Session.of(row, workspace_id)


@session_router.post("/{session_id}/peers", response_model=schemas.Session)
async def add_peers_to_session(
    memory: Mem, workspace_id: WorkspaceId, session_id: SessionId, peers: PeerConfigs
) -> schemas.Session:
    """Add Peers to a Session (made, with the session, if missing); a peer that had left comes back"""
    row = await memory.run(v3.add_members_in, workspace_id, session_id, _pairs(peers))
    return schemas.Session.of(row, workspace_id)


@session_router.put("/{session_id}/peers", response_model=schemas.Session)
async def set_session_peers(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    peers: Annotated[
        dict[str, schemas.SessionPeerConfig], Body(description="List of peer IDs to set for the session")
    ],
) -> schemas.Session:
    """Set a Session's Peers: those named (re)join with this configuration, the others leave"""
    row = await memory.run(v3.set_members_in, workspace_id, session_id, _pairs(peers))
    return schemas.Session.of(row, workspace_id)


@session_router.delete("/{session_id}/peers", response_model=schemas.Session)
async def remove_peers_from_session(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    peers: Annotated[list[str], Body(description="List of peer IDs to remove from the session")],
) -> schemas.Session:
    """Remove Peers from a Session (they leave; what they said stays)"""
    row = await memory.run(v3.remove_members_in, workspace_id, session_id, peers)
    return schemas.Session.of(row, workspace_id)


@session_router.get("/{session_id}/peers", response_model=schemas.Page[schemas.Peer])
async def get_session_peers(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Peer]:
    """Get the present Peers of a Session, in the order they joined"""
    found = await memory.run(v3.members_in, workspace_id, session_id, page=page, size=size)
    return schemas.page(schemas.Peer, [schemas.Peer.of(row, workspace_id) for row in found.items], found)


@session_router.get("/{session_id}/peers/{peer_id}/config", response_model=schemas.SessionPeerConfig)
async def get_peer_config(
    memory: Mem, workspace_id: WorkspaceId, session_id: SessionId, peer_id: PeerId
) -> schemas.SessionPeerConfig:
    """Get a Peer's configuration in a Session (null: not set)"""
    row = await memory.run(v3.member_config_in, workspace_id, session_id, peer_id)
    return schemas.SessionPeerConfig.model_construct(
        observe_me=row.observe_me, observe_others=row.observe_others
    )


@session_router.put("/{session_id}/peers/{peer_id}/config", status_code=204)
async def set_peer_config(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    peer_id: PeerId,
    config: Annotated[schemas.SessionPeerConfig, Body(description="Peer configuration")],
) -> Response:
    """Set a Peer's configuration in a Session (what is given changes; a non-member joins with it)"""
    await memory.run(v3.set_member_config_in, workspace_id, session_id, peer_id, config.pair())
    return Response(status_code=204)


@session_router.get("/{session_id}/summaries", response_model=schemas.SessionSummaries)
async def get_session_summaries(
    memory: Mem, workspace_id: WorkspaceId, session_id: SessionId
) -> schemas.SessionSummaries:
    """Get a Session's newest short and long summaries (written by the deriver)"""
    found = await memory.run(v3.summaries_in, workspace_id, session_id)
    short, long = (found.get(label) for label in v3.SUMMARY_LABELS)
    return schemas.SessionSummaries.model_construct(
        id=session_id,
        short_summary=schemas.Summary.of(short) if short else None,
        long_summary=schemas.Summary.of(long) if long else None,
    )


@session_router.get("/{session_id}/context", response_model=schemas.SessionContext)
async def get_session_context(
    memory: Mem,
    workspace_id: WorkspaceId,
    session_id: SessionId,
    tokens: Annotated[
        int | None, Query(le=CONTEXT_TOKENS_MAX, description="Number of tokens to use for the context")
    ] = None,
    search_query: Annotated[
        str | None, Query(description="A query to pick the conclusions most relevant to it")
    ] = None,
    summary: Annotated[
        bool, Query(description="Whether to include a summary of the session (most of the budget's 40%)")
    ] = True,
    peer_target: Annotated[
        str | None, Query(description="A peer whose representation and card to include")
    ] = None,
    peer_perspective: Annotated[
        str | None, Query(description="The peer whose view of peer_target to use (needs peer_target)")
    ] = None,
    limit_to_session: Annotated[
        bool, Query(description="Only conclusions drawn from this session (with peer_target)")
    ] = False,
    search_top_k: Annotated[
        int | None, Query(ge=1, le=100, description="Conclusions found by search_query")
    ] = None,
    search_max_distance: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="How far a conclusion may be from search_query")
    ] = None,
    include_most_frequent: Annotated[
        bool, Query(description="Whether to include the most frequently derived conclusions")
    ] = False,
    max_conclusions: Annotated[
        int | None, Query(ge=1, le=100, description="Most conclusions to include")
    ] = None,
) -> schemas.SessionContext:
    """Get a Session's context within a token budget

    With peer_target, first what peer_perspective (default: the target itself) holds of the target: its
    representation and card. Then the summary that fits 40% of the budget best, then the newest messages
    from where it ends, as many as the rest of the budget holds by their token counts (oldest first)."""
    if peer_perspective is not None and peer_target is None:
        raise invalid_input(("query", "peer_perspective"), "peer_perspective needs peer_target")
    budget = CONTEXT_TOKENS_MAX if tokens is None else tokens
    seen: str | None = None
    card: list[str] | None = None
    if peer_target is not None:
        observer = peer_perspective or peer_target
        session_ids = None
        if limit_to_session:
            session_ids = [(await memory.run(v3.session_in, workspace_id, session_id)).id]
        ask = representation.Ask(
            search_query=search_query,
            search_top_k=search_top_k,
            search_max_distance=search_max_distance,
            include_most_frequent=include_most_frequent,
            max_conclusions=max_conclusions or 100,
            session_ids=session_ids,
        )
        card = await memory.run(conclusions.card_of, workspace_id, observer, peer_target)
        seen = await representation.representation(memory, workspace_id, observer, peer_target, ask)
        budget -= estimate_tokens(seen) + (estimate_tokens("\n".join(card)) if card else 0)
    chosen, rows = await memory.run(v3.context_in, workspace_id, session_id, tokens=budget, summary=summary)
    return schemas.SessionContext.model_construct(
        id=session_id,
        messages=[schemas.Message.of(row, workspace_id, session_id, row.peer_name) for row in rows],
        summary=schemas.Summary.of(chosen) if chosen else None,
        peer_representation=seen,
        peer_card=card,
    )
