"""Hybrid search over a user's messages: a Rapport extension to the Honcho v1 API."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, Field

from deployments.api import schemas
from deployments.api.params import AppId, Mem, SessionId, UserId
from deployments.api.ratelimit import admitted

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}", tags=["search"], dependencies=[Depends(admitted)]
)


class MessageSearch(schemas.RequestBody):
    query: str = Field(min_length=1, max_length=1000, description="What to look for, in natural language")
    top_k: int = Field(default=10, ge=1, le=100, description="How many messages to return")
    mode: Literal["semantic", "fulltext", "hybrid"] = Field(
        default="hybrid",
        description="semantic: embedding similarity; fulltext: BM25 over the words; hybrid: both, fused, "
        "with a boost for messages next to strong matches",
    )
    filter: schemas.Metadata | None = Field(
        default=None, description="Keep messages whose metadata contains this"
    )


class MessageSearchResult(BaseModel):
    message: schemas.Message
    score: float = Field(description="Higher is better; comparable within one response")


async def _search(memory: Mem, body: MessageSearch, **scope: str) -> list[MessageSearchResult]:
    hits = await memory.search_messages(
        **scope, query=body.query, top_k=body.top_k, mode=body.mode, filter=body.filter
    )
    return [MessageSearchResult(message=schemas.Message.from_row(m), score=s) for m, s in hits]


@router.post("/search", response_model=list[MessageSearchResult])
async def search_user_messages(
    memory: Mem, app_id: AppId, user_id: UserId, body: Annotated[MessageSearch, Body()]
) -> list[MessageSearchResult]:
    """Search all of a user's messages, best first. New messages are searchable once indexed (seconds;
    /health shows the lag)."""
    return await _search(memory, body, app_id=app_id, user_id=user_id)


@router.post("/sessions/{session_id}/search", response_model=list[MessageSearchResult])
async def search_session_messages(
    memory: Mem, app_id: AppId, user_id: UserId, session_id: SessionId, body: Annotated[MessageSearch, Body()]
) -> list[MessageSearchResult]:
    """Search one session's messages, best first."""
    return await _search(memory, body, app_id=app_id, user_id=user_id, session_id=session_id)
