"""v3 queue status (the deriver's work) and dreams."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response

from deployments.api.params import Mem
from deployments.api.v3 import schemas
from deployments.api.v3.access import v3_key
from deployments.api.v3.params import WorkspaceId
from storage import dreams, v3

router = APIRouter(
    prefix="/v3/workspaces/{workspace_id}", tags=["workspaces"], dependencies=[Depends(v3_key)]
)


def _status(counts: v3.QueueCounts, session: str | None = None) -> dict[str, object]:
    return {
        "total_work_units": counts.total,
        "completed_work_units": counts.completed,
        "in_progress_work_units": counts.in_progress,
        "pending_work_units": counts.pending,
        **({"session_id": session} if session is not None else {}),
    }


@router.get("/queue/status", response_model=schemas.QueueStatus)
async def get_queue_status(
    memory: Mem,
    workspace_id: WorkspaceId,
    observer_id: Annotated[str | None, Query(description="Only work this peer observes")] = None,
    sender_id: Annotated[str | None, Query(description="Only the messages this peer sent")] = None,
    session_id: Annotated[str | None, Query(description="Only this session's work")] = None,
) -> schemas.QueueStatus:
    """Get the Workspace's derivation work: messages derived (completed), being derived, and waiting

    A message is one unit: waiting, being derived, or finished. Work parked after repeated failures is
    finished, not waiting forever (/health, `rapport queue` and the derivation.parked event say why).
    sender_id counts the messages the peer sent; observer_id those it observes (its own, and the
    sessions where its observe_others is on). Without session_id, the work is also given by session
    name."""
    total, by_session = await memory.run(
        v3.queue_status, workspace_id, session=session_id, sender=sender_id, observer=observer_id
    )
    sessions = None
    if session_id is None and by_session:
        sessions = {
            name: schemas.SessionQueueStatus.model_validate(_status(counts, name))
            for name, counts in by_session.items()
        }
    return schemas.QueueStatus.model_validate({**_status(total), "sessions": sessions})


@router.post("/schedule_dream", status_code=204)
async def schedule_dream(
    memory: Mem,
    workspace_id: WorkspaceId,
    request: Annotated[schemas.ScheduleDreamRequest, Body(description="Dream scheduling parameters")],
) -> Response:
    """Schedule a Dream

    Queues a consolidation pass over what the observer holds about the observed peer (itself by
    default): near-duplicates merged, contradicted conclusions superseded by the newer (never deleted),
    deductive conclusions written with their premises, the peer card refreshed. The deriver's workers
    run it soon, with the deriver's model. Asking while one is queued or running for the pair asks
    nothing more. A dream covers all of the pair's conclusions; session_id is checked, not used."""
    if request.session_id is not None:
        await memory.run(v3.session_in, workspace_id, request.session_id)
    await memory.run(dreams.request_in, workspace_id, request.observer, request.observed, reason="requested")
    return Response(status_code=204)
