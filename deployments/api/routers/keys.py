"""API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from deployments.api.auth import mint_key, require_admin
from deployments.api.errors import APIError, responses
from deployments.api.params import Mem
from storage.scopes import resolve_scope

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", response_model=None, dependencies=[Depends(require_admin)], responses=responses(405))
async def create_key(
    request: Request,
    memory: Mem,
    app_id: Annotated[str | None, Query(description="ID of the app to scope the key to")] = None,
    user_id: Annotated[str | None, Query(description="ID of the user to scope the key to")] = None,
    session_id: Annotated[str | None, Query(description="ID of the session to scope the key to")] = None,
    collection_id: Annotated[
        str | None, Query(description="ID of the collection to scope the key to")
    ] = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """Create a new Key, scoped to the narrowest resource named (admin only).

    The key also carries the ids of that resource's owners, so it can never reach another app or user.
    """
    auth = request.app.state.settings.auth
    if not auth.use_auth:
        raise APIError(
            405, "auth is off (AUTH_USE_AUTH=false): every request is allowed and keys are not used"
        )
    scope = await memory.run(
        resolve_scope, app_id=app_id, user_id=user_id, session_id=session_id, collection_id=collection_id
    )
    return {"key": mint_key(auth.jwt_secret.get_secret_value(), scope, expires_at=expires_at)}
