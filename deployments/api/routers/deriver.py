"""How far derivation has got: a Rapport extension to the Honcho v1 API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from deployments.api.auth import Key, current_key
from deployments.api.errors import invalid_input
from deployments.api.params import AppId, Mem
from deployments.api.ratelimit import admitted
from storage import derivation

router = APIRouter(prefix="/v1/apps/{app_id}/deriver", tags=["deriver"], dependencies=[Depends(admitted)])


class DeriverStatus(BaseModel):
    pending: int = Field(description="Messages waiting to be derived")
    in_progress: int = Field(description="Messages a worker is deriving now")
    retrying: int = Field(description="Messages whose derivation failed and will be retried")
    parked: int = Field(
        description="Messages that failed every attempt (`rapport deriver retry` revives them)"
    )
    done: int = Field(description="Messages derived")
    oldest_pending_s: float = Field(description="How long the oldest waiting message has waited, in seconds")


@router.get("/status", response_model=DeriverStatus)
async def get_deriver_status(
    memory: Mem,
    app_id: AppId,
    key: Annotated[Key, Depends(current_key)],
    user_id: Annotated[str | None, Query(description="Only this user's messages")] = None,
    session_id: Annotated[str | None, Query(description="Only this session's messages")] = None,
) -> DeriverStatus:
    """Counts of the derivation work for an app, a user or a session."""
    user_id = user_id or key.user_id  # a key scoped to a user or session sees only its own work
    session_id = session_id or key.session_id
    if session_id is not None and user_id is None:
        raise invalid_input(("query", "user_id"), "give user_id with session_id", "missing")
    counts = await memory.run(derivation.counts_of, app_id, user_id, session_id)
    return DeriverStatus(**asdict(counts))
