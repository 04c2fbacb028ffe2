"""v3 API keys (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from deployments.api.auth import mint_v3_key
from deployments.api.errors import APIError, invalid_input, responses
from deployments.api.v3.access import require_v3_admin
from storage.errors import InvalidError
from storage.workspaces import check_v3_name

router = APIRouter(prefix="/v3/keys", tags=["keys"])


@router.post("", response_model=None, dependencies=[Depends(require_v3_admin)], responses=responses(405))
async def create_key(
    request: Request,
    workspace_id: Annotated[str | None, Query(description="ID of the workspace to scope the key to")] = None,
    peer_id: Annotated[str | None, Query(description="ID of the peer to scope the key to")] = None,
    session_id: Annotated[str | None, Query(description="ID of the session to scope the key to")] = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """Create a new Key scoped to a workspace, or to a peer or a session in it (admin only)

    The key names what it opens; those need not exist yet (a workspace key may make its workspace)."""
    auth = request.app.state.settings.auth
    if not auth.use_auth:
        raise APIError(
            405, "auth is off (AUTH_USE_AUTH=false): every request is allowed and keys are not used"
        )
    if workspace_id is None:
        loc = "peer_id" if peer_id is not None else "session_id" if session_id is not None else "workspace_id"
        raise invalid_input(
            ("query", loc), "give workspace_id (and, to narrow it, peer_id or session_id)", "missing"
        )
    if peer_id is not None and session_id is not None:
        raise invalid_input(("query", "session_id"), "a key is scoped to a peer or to a session, not both")
    for name, value in (("workspace_id", workspace_id), ("peer_id", peer_id), ("session_id", session_id)):
        if value is not None:
            try:
                check_v3_name(value, field=("query", name), what=name.removesuffix("_id"))
            except InvalidError as exc:
                raise invalid_input(exc.field, exc.detail) from exc
    key = mint_v3_key(
        auth.jwt_secret.get_secret_value(),
        workspace=workspace_id,
        peer=peer_id,
        session=session_id,
        expires_at=expires_at,
    )
    return {"key": key}
