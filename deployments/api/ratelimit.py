"""Per-app request rate limits (limits.app_requests_per_s): a request over its app's budget gets 429 with
``Retry-After``. The budget is a token bucket in Postgres (storage/ratelimits.py) that every API replica
draws on, a few tokens at a time."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from fastapi import Depends, Request

from deployments.api.auth import Key, require_scope, route_ids
from deployments.api.errors import APIError
from pipelines.memory import Memory
from rapport import metrics
from rapport.settings import LimitSettings
from storage import ratelimits

log = logging.getLogger(__name__)

HOLD_S = 1.0  # tokens a replica took and did not spend go back to the bucket after this
CHUNK_S = 0.1  # a replica takes about this many seconds' worth of tokens at a time
LOCKS = 64  # a replica's trips to the bucket are serialised per app, on one of this many locks


@dataclass
class _Allowance:
    tokens: int = 0  # taken from the bucket, not spent yet
    expires: float = 0.0  # monotonic time they go back (given back on the next trip to the bucket)
    refused_until: float = 0.0  # the bucket was empty: refuse locally until a token has accrued
    unknown_until: float = 0.0  # no such app: do not ask again before this (its requests get 404)


class AppRateLimiter:
    """Admits each app's requests within its budget (``LimitSettings.requests_for``: a rate a second and
    a burst at once, the default's or the app's own)."""

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self._allowances: dict[str, _Allowance] = {}
        self._locks = [asyncio.Lock() for _ in range(LOCKS)]

    @classmethod
    def configured(cls, limits: LimitSettings) -> AppRateLimiter | None:
        return cls(limits) if limits.limits_requests else None

    async def admit(self, memory: Memory, app_id: str) -> float | None:
        """None if the request may go on; else how many seconds until the app has budget again."""
        rate, burst = self.limits.requests_for(app_id)
        if not rate:
            return None
        decided, wait = self._local(app_id)
        if decided:
            return wait
        async with self._locks[hash(app_id) % LOCKS]:
            decided, wait = self._local(app_id)  # the request that held the lock may have taken tokens
            if decided:
                return wait
            held = self._allowances.pop(app_id, None)
            unspent = held.tokens if held is not None else 0  # expired: they go back now
            chunk = max(1, min(burst, math.floor(rate * CHUNK_S)))
            try:
                grant = await memory.run(
                    ratelimits.take, app_id, rate=rate, burst=burst, want=chunk, returned=unspent
                )
            except Exception as exc:  # the request itself will meet the outage and answer 503
                log.warning(
                    "rate limit: cannot read app %s's budget (%s); letting the request through", app_id, exc
                )
                return None
            now = time.monotonic()
            if grant is None:
                self._allowances[app_id] = _Allowance(unknown_until=now + HOLD_S)
                return None  # no such app: the route answers 404
            if grant.granted <= 0:
                wait = (1.0 - grant.left) / rate
                self._allowances[app_id] = _Allowance(refused_until=now + wait)
                return wait
            self._allowances[app_id] = _Allowance(grant.granted - 1, now + HOLD_S)
            return None

    def _local(self, app_id: str) -> tuple[bool, float | None]:
        """Decided here: (True, None) spent a token held here (or the app does not exist); (True,
        seconds) refused while the bucket is known to be empty. (False, None): ask the database."""
        allowance = self._allowances.get(app_id)
        if allowance is None:
            return False, None
        now = time.monotonic()
        if allowance.tokens > 0 and allowance.expires > now:
            allowance.tokens -= 1
            return True, None
        if allowance.refused_until > now:
            return True, allowance.refused_until - now
        if allowance.unknown_until > now:
            return True, None
        return False, None


async def admitted(request: Request, key: Key = Depends(require_scope)) -> Key:
    """Router dependency: the key covers the route (auth first, so that requests without a valid key
    never spend an app's budget), and the route's app is within its request rate. The app is the one
    auth checked the key against: the path's, a declared query parameter's, or the key's own."""
    limiter: AppRateLimiter | None = request.app.state.rate_limiter
    app_id = route_ids(request, key).get("app_id")
    if limiter is None or app_id is None:
        return key
    wait = await limiter.admit(request.app.state.memory, app_id)
    if wait is not None:
        metrics.RATE_LIMITED.inc(app_id=app_id)
        rate, _ = limiter.limits.requests_for(app_id)
        raise APIError(
            429,
            f"app {app_id} is over its limit of {rate:g} requests a second "
            "(limits.app_requests_per_s, or limits.apps.<app_id>); retry after Retry-After seconds",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key
