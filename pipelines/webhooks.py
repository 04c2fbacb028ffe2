"""Sending Honcho v3's webhook events: a signed JSON POST to each of a workspace's endpoints.

The body is ``{"data": ..., "timestamp": ..., "type": ...}`` (keys sorted, no spaces), signed with
HMAC-SHA256 under ``webhook.secret`` in the ``X-Honcho-Signature`` header (hex), as Honcho signs it;
receivers check the signature over the raw body. Without a secret nothing is sent (as in Honcho): an
unsigned event could not be trusted. Delivery is at most ``webhook.attempts`` tries per endpoint, with
backoff, in the background of the process that raised the event; an endpoint that never answers is
logged, never retried later (webhooks are notifications: the queue status is the record).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from rapport import metrics
from rapport.settings import WebhookSettings

log = logging.getLogger(__name__)


def body_of(event_type: str, data: dict[str, Any], now: datetime | None = None) -> bytes:
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {"type": event_type, "data": data, "timestamp": moment}, separators=(",", ":"), sort_keys=True
    ).encode()


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """Sends events in the background; ``close`` waits for those under way."""

    def __init__(self, settings: WebhookSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.secret = settings.secret.get_secret_value() if settings.secret else ""
        self._transport = transport
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def emit(self, event_type: str, data: dict[str, Any], urls: Sequence[str]) -> None:
        """Send the event to ``urls`` in the background (nothing without a secret or endpoints)."""
        if not self.enabled or not urls:
            if urls:
                log.debug("webhook %s not sent: webhook.secret is not set", event_type)
            return
        task = asyncio.create_task(self.send(event_type, data, urls))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def send(self, event_type: str, data: dict[str, Any], urls: Sequence[str]) -> None:
        body = body_of(event_type, data)
        headers = {
            "Content-Type": "application/json",
            "X-Honcho-Signature": signature(self.secret, body),
            "User-Agent": "rapport-webhooks",
        }
        async with httpx.AsyncClient(timeout=self.settings.timeout_s, transport=self._transport) as client:
            await asyncio.gather(*(self._deliver(client, url, body, headers, event_type) for url in urls))

    async def _deliver(
        self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], event_type: str
    ) -> None:
        for attempt in range(1, self.settings.attempts + 1):
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.status_code < 300:
                    metrics.WEBHOOKS.inc(event=event_type, outcome="delivered")
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.settings.attempts:
                await asyncio.sleep(min(2.0 ** (attempt - 1), 30.0))
        metrics.WEBHOOKS.inc(event=event_type, outcome="failed")
        log.warning(
            "webhook %s to %s failed after %d tries: %s", event_type, url, self.settings.attempts, problem
        )

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
