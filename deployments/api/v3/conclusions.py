"""v3 conclusions: what one peer holds about another (or Rapport about a peer), created through the API,
listed with filters, queried by meaning, deleted. Deriving them is the deriver's work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import PageNumber, PageSize, WorkspaceId
from storage import conclusions

router = APIRouter(
    prefix="/v3/workspaces/{workspace_id}/conclusions", tags=["conclusions"], dependencies=[Depends(v3_key)]
)


@router.post("", response_model=list[schemas.Conclusion], status_code=201)
async def create_conclusions(
    memory: Mem,
    workspace_id: WorkspaceId,
    body: Annotated[schemas.ConclusionBatchCreate, Body(description="Batch of Conclusions to create")],
) -> list[schemas.Conclusion]:
    """Create up to 100 Conclusions (explicit), embedded and searchable when this returns

    Their peers and sessions must exist. observer_id = observed_id is what Rapport holds about that
    peer (the same store as the deriver's facts)."""
    rows = await memory.add_conclusions(workspace_id, [c.model_dump() for c in body.conclusions])
    return [schemas.Conclusion.of(row) for row in rows]


@router.post("/list", response_model=schemas.Page[schemas.Conclusion])
async def list_conclusions(
    memory: Mem,
    workspace_id: WorkspaceId,
    options: Annotated[
        schemas.ConclusionGet | None, Body(description="Filtering options for the Conclusions list")
    ] = None,
    reverse: Annotated[bool | None, Query(description="Whether to reverse the order of results")] = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Conclusion]:
    """List Conclusions, newest first (filters: observer_id, observed_id, session_id, level...)"""
    found = await memory.run(
        conclusions.list_conclusions,
        workspace_id,
        filters=options.filters if options else None,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    return schemas.page(schemas.Conclusion, [schemas.Conclusion.of(row) for row in found.items], found)


@router.post("/query", response_model=list[schemas.Conclusion])
async def query_conclusions(
    memory: Mem,
    workspace_id: WorkspaceId,
    body: Annotated[schemas.ConclusionQuery, Body(description="Query parameters")],
) -> list[schemas.Conclusion]:
    """Query Conclusions by meaning, closest first

    filters must name the observer (observer_id) and the observed peer (observed_id); distance is the
    largest cosine distance kept."""
    rows = await memory.query_conclusions(
        workspace_id, body.query, top_k=body.top_k, distance=body.distance, filters=body.filters
    )
    return [schemas.Conclusion.of(row) for row in rows]


@router.get("/{conclusion_id}", response_model=schemas.Conclusion)
async def get_conclusion(
    memory: Mem,
    workspace_id: WorkspaceId,
    conclusion_id: Annotated[str, Path(description="Conclusion ID")],
) -> schemas.Conclusion:
    """Get a Conclusion by ID (newer than the v3.0.12 contract; honcho-ai 2.7 calls it)"""
    return schemas.Conclusion.of(await memory.run(conclusions.conclusion_in, workspace_id, conclusion_id))


@router.delete("/{conclusion_id}", status_code=204)
async def delete_conclusion(
    memory: Mem,
    workspace_id: WorkspaceId,
    conclusion_id: Annotated[str, Path(description="Conclusion ID")],
) -> Response:
    """Delete a Conclusion (from PostgreSQL, then the search index)"""
    await memory.delete_conclusion(workspace_id, conclusion_id)
    return Response(status_code=204)
