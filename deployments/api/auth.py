"""API keys: HS256 JWTs scoped like Honcho v1's (claims ``ad``, ``ap``, ``us``, ``se``, ``co``, ``exp``) or
like Honcho v3's (``w``, ``p``, ``s``: a workspace, peer and session by name), on the same secret.

A key is of one kind: v1 claims open only ``/v1`` routes and v3 claims only ``/v3`` routes (an admin key,
``ad``, opens both), so neither kind can reach what the other's scope would refuse. A key with claims of
both kinds is refused.

Off by default (``AUTH_USE_AUTH=false``). When on, every route checks the key's scope against the ids in
its path *before* touching the database, so a request outside its scope gets the same 401 whether or
not the resource exists.

Keys minted by Honcho v1.1.0 for the same secret work unchanged: Honcho signs ``t`` (a creation time
string, empty in its start-up admin key, never used for security) instead of ``iat``, and writes ``exp``
as an ISO-8601 string rather than a NumericDate. Both forms of ``exp`` are read here; claims this server
does not know are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deployments.api.errors import APIError, invalid_input
from storage.scopes import Scope

ALGORITHM = "HS256"
# Path (or query) parameter -> claim, from the widest scope to the narrowest.
CLAIMS = {"app_id": "ap", "user_id": "us", "session_id": "se", "collection_id": "co"}
V3_CLAIMS = {"workspace": "w", "peer": "p", "session": "s"}
_LEAVES = ("session_id", "collection_id")

bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True, slots=True)
class Key:
    """What a request's key allows."""

    admin: bool = False
    app_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    collection_id: str | None = None
    # v3 (names, not ids)
    workspace: str | None = None
    peer: str | None = None
    session: str | None = None

    @property
    def v3(self) -> bool:
        """A v3 key: scoped by workspace (and peer or session) names."""
        return self.workspace is not None

    def claim(self, param: str) -> str | None:
        return getattr(self, param)  # type: ignore[no-any-return]

    def narrowest(self) -> list[str]:
        """The parameters a route must carry for this key to apply: its most specific claims."""
        leaves = [p for p in _LEAVES if self.claim(p)]
        if leaves:
            return leaves
        return ["user_id"] if self.user_id else ["app_id"]


ADMIN = Key(admin=True)


def mint_key(secret: str, scope: Scope | None = None, *, expires_at: datetime | None = None) -> str:
    """A signed key: admin when ``scope`` is None, else limited to that scope."""
    claims: dict[str, Any] = {"iat": int(datetime.now(UTC).timestamp())}
    if scope is None:
        claims["ad"] = True
    else:
        for param, claim in CLAIMS.items():
            value = getattr(scope, param)
            if value:
                claims[claim] = value
    if expires_at is not None:
        claims["exp"] = int(_utc(expires_at).timestamp())
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def mint_v3_key(
    secret: str,
    *,
    workspace: str | None = None,
    peer: str | None = None,
    session: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """A v3 key: admin when nothing is named, else scoped to the workspace and the peer or session in it.
    Times are ISO-8601 text, as Honcho v3 writes them."""
    claims: dict[str, Any] = {"t": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if workspace is None:
        claims["ad"] = True
    for name, claim in V3_CLAIMS.items():
        value = {"workspace": workspace, "peer": peer, "session": session}[name]
        if value:
            claims[claim] = value
    if expires_at is not None:
        claims["exp"] = _utc(expires_at).isoformat()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _utc(moment: datetime) -> datetime:
    """A key's expiry in UTC (a time without an offset is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def decode_key(secret: str, token: str) -> Key:
    try:
        # ``exp`` is checked below: PyJWT accepts only the NumericDate form and Honcho's keys use ISO text.
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"verify_exp": False})
    except jwt.InvalidTokenError as exc:
        raise _unauthorized("the API key is not valid (malformed, or not signed by this server)") from exc
    expires_at = _expiry(claims.get("exp"))
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise _unauthorized("the API key has expired; ask an admin for a new one")
    scope = {param: claims.get(claim) or None for param, claim in CLAIMS.items()}
    names = {param: claims.get(claim) or None for param, claim in V3_CLAIMS.items()}
    if not all(value is None or isinstance(value, str) for value in [*scope.values(), *names.values()]):
        raise _unauthorized("the API key is not valid: its ap/us/se/co/w/p/s claims must be strings")
    if any(scope.values()) and any(names.values()):
        raise _unauthorized("the API key is not valid: it mixes v1 claims (ap/us/se/co) with v3 ones (w/p/s)")
    if (names["peer"] or names["session"]) and not names["workspace"]:
        raise _unauthorized("the API key is not valid: a peer or session claim needs its workspace (w)")
    key = Key(admin=claims.get("ad") is True, **scope, **names)
    if not key.admin and not any(key.claim(p) for p in CLAIMS) and not key.v3:
        raise _unauthorized("the API key grants nothing: it names neither admin nor any resource")
    return key


def _expiry(exp: Any) -> datetime | None:
    """When a key expires: ``exp`` as a NumericDate (seconds since the epoch, as RFC 7519 has it) or as
    ISO-8601 text (as Honcho v1 mints it; a time without an offset is UTC). None or "" never expires."""
    if exp is None or exp == "":
        return None
    try:
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return datetime.fromtimestamp(exp, UTC)
        if isinstance(exp, str):
            parsed = datetime.fromisoformat(exp)
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise _unauthorized("the API key's exp claim is not a valid time") from exc
    raise _unauthorized("the API key's exp claim is neither a NumericDate nor an ISO-8601 time")


def _unauthorized(detail: str) -> APIError:
    return APIError(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def current_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Key:
    """The request's key; everyone is admin while auth is off."""
    auth = request.app.state.settings.auth
    if not auth.use_auth:
        return ADMIN
    if credentials is None:
        raise _unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    return decode_key(auth.jwt_secret.get_secret_value(), credentials.credentials)


def route_ids(request: Request, key: Key) -> dict[str, str]:
    """The ids a request addresses: path parameters, plus the optional query ids some GET routes take.

    A route that takes an id as an optional query parameter uses the key's own id when it is left out
    (Honcho's "get by key" routes), so that counts as addressing the key's id.
    """
    ids = {p: request.path_params[p] for p in CLAIMS if p in request.path_params}
    route = request.scope.get("route")
    declared = {param.name for param in route.dependant.query_params} if route is not None else set()
    for param in CLAIMS:
        if param in declared and param not in ids:
            value = request.query_params.get(param) or key.claim(param)
            if value:
                ids[param] = value
    return ids


async def require_scope(request: Request, key: Key = Depends(current_key)) -> Key:
    """Router dependency: the key must cover every id the route addresses."""
    if key.admin:
        return key
    if key.v3:
        raise _unauthorized("a v3 key (w/p/s claims) opens only /v3 routes; ask an admin for a v1 key")
    ids = route_ids(request, key)
    for param, value in ids.items():
        claimed = key.claim(param)
        if claimed is not None and claimed != value:
            raise _unauthorized("the API key is not permitted for this resource")
    if not any(param in ids for param in key.narrowest()):
        raise _unauthorized("the API key is not permitted for this operation")
    return key


async def require_app_key(key: Key = Depends(require_scope)) -> Key:
    """An admin key, or a key of the route's app that is not narrowed to a user or below (erasing a
    user is the app's decision, not the user's key's)."""
    if key.admin or (key.app_id and not any((key.user_id, key.session_id, key.collection_id))):
        return key
    raise _unauthorized("this operation needs an admin key or a key scoped to the app")


async def require_admin(key: Key = Depends(current_key)) -> Key:
    if not key.admin:
        raise _unauthorized("this operation needs an admin key")
    return key


def id_from_key(value: str | None, key: Key, param: str) -> str:
    """An id given in the query, else the request key's own (Honcho's "get by key" routes); 422 if neither."""
    value = value or key.claim(param)
    if value is None:
        raise invalid_input(
            ("query", param), f"give {param}, or use a key scoped to a {param.removesuffix('_id')}", "missing"
        )
    return value
