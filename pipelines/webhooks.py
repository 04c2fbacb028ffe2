"""Honcho v3's webhook events: a signed JSON POST to each of a workspace's endpoints, from an outbox.

The body is ``{"data": ..., "timestamp": ..., "type": ...}`` (keys sorted, no spaces), fixed when the
event happens, signed with HMAC-SHA256 under ``webhook.secret`` in the ``X-Honcho-Signature`` header
(hex), as Honcho signs it; receivers check the signature over the raw body. Without a secret nothing is
recorded or sent (as in Honcho).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from rapport import metrics
from rapport.settings import WebhookSettings
from storage import webhooks
from storage.db import Database

log = logging.getLogger(__name__)


def body_of(event_type: str, data: dict[str, Any], now: datetime | None = None) -> bytes:
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {"type": event_type, "data": data, "timestamp": moment}, separators=(",", ":"), sort_keys=True
    ).encode()


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """Records events in the outbox (storage/webhooks.py) and delivers them.

    ``record`` writes the event's body for each endpoint in the caller's transaction and nothing else: it
    never waits on an endpoint. ``nudge`` then tries the due deliveries once in the background, so an
    event usually leaves within the second; ``run`` (the API's processes run it) retries what failed,
    with backoff (``webhook.retry_base_s``, doubling, at most an hour), across restarts, until
    ``webhook.attempts``; then the delivery is marked failed with its last error, logged and counted
    (``rapport_webhooks{outcome="failed"}``). Delivery is at least once: a receiver that must not act
    twice keys on the ``X-Rapport-Delivery`` header."""

    LEASE_MARGIN_S = 5.0

    def __init__(self, settings: WebhookSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.secret = settings.secret.get_secret_value() if settings.secret else ""
        self._transport = transport
        self._pending: set[asyncio.Task[int]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    async def record(self, db: AsyncConnection, event: webhooks.Event) -> int:
        """Queue the event for its endpoints (nothing without a secret: an unsigned event could not be
        trusted, and none is kept to be signed later)."""
        if not self.enabled or not event.endpoints:
            if event.endpoints:
                log.debug("webhook %s not recorded: webhook.secret is not set", event.type)
            return 0
        return await webhooks.record(db, event, body_of(event.type, event.data).decode())

    def nudge(self, database: Database) -> None:
        """Try the due deliveries once, in the background."""
        if not self.enabled:
            return
        task = asyncio.create_task(self._quietly(database))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _quietly(self, database: Database) -> int:
        try:
            return await self.deliver_due(database)
        except Exception as exc:  # the database may be down: the loop (or the next nudge) tries again
            log.warning("webhook delivery round failed: %s", exc)
            return 0

    async def deliver_due(self, database: Database, *, limit: int = 50) -> int:
        """Send the deliveries that are due, at most ``limit``; how many were tried."""
        lease = self.settings.timeout_s + self.LEASE_MARGIN_S
        async with database.autocommit() as db:
            due = await webhooks.claim_due(db, limit=limit, lease_s=lease)
        if not due:
            return 0
        async with httpx.AsyncClient(timeout=self.settings.timeout_s, transport=self._transport) as client:
            outcomes = await asyncio.gather(*(self._post(client, d) for d in due))
        async with database.transaction() as db:
            for delivery, problem in zip(due, outcomes, strict=True):
                if problem is None:
                    await webhooks.delivered(db, delivery.id)
                    metrics.WEBHOOKS.inc(event=delivery.event_type, outcome="delivered")
                    continue
                final = delivery.attempts >= self.settings.attempts
                retry = (
                    None if final else min(self.settings.retry_base_s * 2 ** (delivery.attempts - 1), 3600.0)
                )
                await webhooks.attempt_failed(db, delivery.id, problem, retry_in_s=retry)
                metrics.WEBHOOKS.inc(event=delivery.event_type, outcome="failed" if final else "retried")
                if final:
                    log.warning(
                        "webhook %s to %s failed after %d attempts: %s",
                        delivery.event_type,
                        delivery.url,
                        delivery.attempts,
                        problem,
                    )
        return len(due)

    async def _post(self, client: httpx.AsyncClient, delivery: webhooks.Delivery) -> str | None:
        """None when delivered, else what went wrong."""
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Honcho-Signature": signature(self.secret, body),
            "X-Rapport-Delivery": delivery.id,
            "User-Agent": "rapport-webhooks",
        }
        try:
            async with asyncio.timeout(self.settings.timeout_s):  # in all, not per phase: within the lease
                response = await client.post(delivery.url, content=body, headers=headers)
        except TimeoutError:
            return f"no answer within {self.settings.timeout_s:g} s"
        except Exception as exc:  # an unusable URL too: that delivery fails, never its batch
            return f"{type(exc).__name__}: {exc}"
        return None if response.status_code < 300 else f"HTTP {response.status_code}"

    async def run(self, database: Database, stop: asyncio.Event) -> None:
        """Deliver until ``stop``: at once while there is more, else every ``webhook.poll_interval_s``;
        every hour, drop what finished more than ``webhook.keep_days`` ago."""
        purged_at = 0.0
        while not stop.is_set():
            tried = await self._quietly(database) if self.enabled else 0
            if time.monotonic() - purged_at > 3600:
                purged_at = time.monotonic()
                await self.purge(database)
            if tried:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_interval_s)

    async def purge(self, database: Database) -> int:
        try:
            async with database.transaction() as db:
                return await webhooks.purge_finished(db, older_than_days=self.settings.keep_days)
        except Exception as exc:
            log.warning("could not drop old webhook deliveries: %s", exc)
            return 0

    async def close(self) -> None:
        """Wait for the nudges under way (what they leave undone stays queued)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
