"""What Rapport knows that bears on a query, for an app to put in its own prompt: a Rapport extension to
the Honcho v1 API. No LLM call; cheap enough to ask on every turn."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from deployments.api import schemas
from deployments.api.params import AppId, Mem, UserId
from deployments.api.ratelimit import admitted
from deployments.api.routers.search import MessageSearchResult
from pipelines.context import ContextOptions, check_queries, gather_context
from pipelines.retrieval import QUERY_MAX

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}", tags=["context"], dependencies=[Depends(admitted)]
)

TOP_K_MAX = 50
MAX_TOKENS_MIN, MAX_TOKENS_MAX = 64, 32_000


class ContextQuery(schemas.RequestBody):
    # A typo in an optional field ("max_token") would silently fall back to the default: refuse it.
    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=QUERY_MAX,
        description="What the context is for: the user's latest message, or a question about them",
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The conversation in progress: its latest summaries and last messages are included",
    )
    top_k: int = Field(default=10, ge=1, le=TOP_K_MAX, description="Most facts, and most relevant messages")
    max_tokens: int = Field(
        default=2000,
        ge=MAX_TOKENS_MIN,
        le=MAX_TOKENS_MAX,
        description="Budget for everything returned, in tokens estimated as 4 characters each (+8 an item)",
    )


class FactResult(BaseModel):
    document: schemas.Document = Field(description="A fact from the user's honcho collection")
    score: float = Field(description="Higher is better; comparable within one response")


class UserContext(BaseModel):
    facts: list[FactResult] = Field(description="Facts about the user, best first; newer first on a topic")
    messages: list[MessageSearchResult] = Field(
        description="Relevant messages from any of the user's sessions, best first"
    )
    summaries: list[schemas.Metamessage] = Field(
        description="The latest short and long summaries (of the session, else of any session)"
    )
    recent: list[schemas.Message] = Field(description="The session's last messages, oldest first")


@router.post("/context", response_model=UserContext)
async def get_user_context(
    request: Request, memory: Mem, app_id: AppId, user_id: UserId, body: Annotated[ContextQuery, Body()]
) -> UserContext:
    """Facts, relevant messages, summaries and recent messages for a query, deduplicated and fitted to
    ``max_tokens``. Facts appear as the deriver derives them, messages once indexed (seconds)."""
    check_queries(body.query, field="query")  # blank text: a 422 naming the field as sent
    settings = request.app.state.settings.dialectic
    options = ContextOptions(
        top_k=body.top_k, max_tokens=body.max_tokens, recent_messages=settings.recent_messages
    )
    context = await gather_context(
        memory,
        app_id=app_id,
        user_id=user_id,
        session_id=body.session_id,
        queries=body.query,
        options=options,
    )
    return UserContext(
        facts=[FactResult(document=schemas.Document.from_row(d), score=s) for d, s in context.facts],
        messages=[
            MessageSearchResult(message=schemas.Message.from_row(m), score=s) for m, s in context.messages
        ],
        summaries=[schemas.Metamessage.from_row(m) for m in context.summaries],
        recent=[schemas.Message.from_row(m) for m in context.recent],
    )
