"""Per-app request budgets: one token bucket per app in Postgres, so every API replica draws on the same
budget. A replica takes tokens a few at a time (``want``) and spends them locally, so the database is
asked at most a few times a second per app and replica, not once per request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class Grant:
    granted: int  # tokens taken (0: the app is over its budget)
    left: float  # tokens left in the bucket after this take


# The bucket is created full on an app's first request (an unknown app gets none: its request 404s).
_CREATE = text(
    "INSERT INTO rate_buckets (app_id, tokens, refilled_at) SELECT id, :burst, now() FROM apps WHERE id = :app "
    "ON CONFLICT (app_id) DO NOTHING"
)
# Refill by the time passed (clock time: a claim that waited for the row lock counts from when it got it)
# and by the tokens a replica gives back unspent, capped at the burst; then take up to ``want`` whole tokens.
_TAKE = text(
    """
    WITH b AS (
        SELECT app_id, clock_timestamp() AS at,
               least(:burst, tokens + :returned
                     + :rate * greatest(0, extract(epoch FROM clock_timestamp() - refilled_at))) AS available
        FROM rate_buckets WHERE app_id = :app FOR UPDATE
    ),
    g AS (SELECT app_id, at, available, greatest(0, least(:want, floor(available))) AS granted FROM b)
    UPDATE rate_buckets r
    SET tokens = g.available - g.granted, refilled_at = g.at
    FROM g WHERE r.app_id = g.app_id
    RETURNING CAST(g.granted AS int) AS granted, g.available - g.granted AS left
    """
)


async def take(
    db: AsyncConnection, app_id: str, *, rate: float, burst: float, want: int, returned: int = 0
) -> Grant | None:
    """Take up to ``want`` tokens from the app's bucket (refilled at ``rate`` a second, holding at most
    ``burst``), after putting back ``returned`` tokens taken earlier and not spent. None if there is no
    such app."""
    params = {"app": app_id, "rate": rate, "burst": float(burst), "want": want, "returned": returned}
    row = (await db.execute(_TAKE, params)).first()
    if row is None:
        await db.execute(_CREATE, params)
        row = (await db.execute(_TAKE, params)).first()
        if row is None:
            return None
    return Grant(int(row.granted), float(row.left))
