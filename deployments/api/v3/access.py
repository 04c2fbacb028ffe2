"""Who may call a v3 route: Honcho v3's key scopes, checked before the route touches anything.

- An admin key (``ad``), or any request while auth is off, may call every route.
- A v1 key may call none (deployments/api/auth.py: a key is of one kind).
- A workspace key (``w``) may call the routes of its workspace, but not the admin ones (listing
  workspaces, minting keys).
- A session key (``w`` + ``s``) may call only routes of its session.
- A peer key (``w`` + ``p``) may call the routes of its peer, and read (``MEMBER_READS``) the sessions it
  is a present member of.

The three get-or-create routes have no path to check before their body is read; each checks its body's
id against the key (``check_creates``).
"""

from __future__ import annotations

import math

from fastapi import Depends, Request

from deployments.api.auth import Key, _unauthorized, current_key
from deployments.api.errors import APIError
from rapport import metrics
from storage import v3
from storage.errors import NotFoundError
from storage.workspaces import workspace

_SESSION = "/v3/workspaces/{workspace_id}/sessions/{session_id}"
MEMBER_READS = {
    ("GET", f"{_SESSION}/peers"),
    ("GET", f"{_SESSION}/peers/{{peer_id}}/config"),
    ("GET", f"{_SESSION}/context"),
    ("GET", f"{_SESSION}/summaries"),
    ("POST", f"{_SESSION}/search"),
    ("POST", f"{_SESSION}/messages/list"),
    ("GET", f"{_SESSION}/messages/{{message_id}}"),
}


def denied() -> Exception:
    return _unauthorized("the API key is not permitted for this resource")


async def v3_key(request: Request, key: Key = Depends(current_key)) -> Key:
    """Router dependency: the key covers the route's workspace, session and peer; then the workspace's
    request budget is drawn on (limits.app_requests_per_s, keyed by the app's id)."""
    if not key.admin:
        await _check(request, key)
    await _admit(request)
    return key


async def _check(request: Request, key: Key) -> None:
    if not key.v3:
        raise _unauthorized("a v1 key (ap/us/se/co claims) opens only /v1 routes; ask an admin for a v3 key")
    params = request.path_params
    if "workspace_id" not in params:
        raise _unauthorized("this operation needs an admin key")
    if params["workspace_id"] != key.workspace:
        raise denied()
    if key.session is not None:
        if params.get("session_id") != key.session:
            raise denied()
    elif key.peer is not None:
        if "session_id" not in params:
            if params.get("peer_id") != key.peer:
                raise denied()
            return
        route = request.scope.get("route")
        template = getattr(route, "path", "")
        if (request.method, template) not in MEMBER_READS or params.get("peer_id", key.peer) != key.peer:
            raise denied()
        memory = request.app.state.memory
        if not await memory.run(v3.is_member, key.workspace, params["session_id"], key.peer):
            raise denied()


def check_creates(key: Key, *, workspace: str, peer: str | None = None, session: str | None = None) -> None:
    """A get-or-create's body id against the key: a workspace key makes what is in its workspace, a peer
    key itself and sessions, a session key its session only."""
    if key.admin:
        return
    if not key.v3 or key.workspace != workspace:
        raise denied()
    if peer is not None and (key.session is not None or (key.peer is not None and key.peer != peer)):
        raise denied()
    if session is not None and key.session is not None and key.session != session:
        raise denied()


async def require_v3_admin(key: Key = Depends(current_key)) -> Key:
    if not key.admin:
        raise _unauthorized("this operation needs an admin key")
    return key


async def v3_creator(request: Request, key: Key = Depends(current_key)) -> Key:
    """Router dependency of the get-or-create routes: the request budget only; the route checks its
    body's id against the key (``check_creates``)."""
    await _admit(request)
    return key


async def _admit(request: Request) -> None:
    limiter = request.app.state.rate_limiter
    name = request.path_params.get("workspace_id")
    if limiter is None or name is None:
        return
    memory = request.app.state.memory
    try:
        app = await memory.run(workspace, name)
    except NotFoundError:  # a workspace that is not there yet: its get-or-create is not limited
        return
    wait = await limiter.admit(memory, app.id)
    if wait is not None:
        metrics.RATE_LIMITED.inc(app_id=app.id)
        rate, _ = limiter.limits.requests_for(app.id)
        raise APIError(
            429,
            f"workspace {name} is over its limit of {rate:g} requests a second "
            f"(limits.app_requests_per_s, or limits.apps.{app.id}); retry after Retry-After seconds",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
