"""Webhook endpoints of a workspace, and what the events sent to them say (pipelines/webhooks.py sends)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Text

from storage.errors import ConflictError, InvalidError, NotFoundError
from storage.ids import new_id
from storage.query import Page, Record, fetch_or_create, page_of
from storage.tables import WebhookDelivery, WebhookEndpoint
from storage.validation import check_name_findable, storable
from storage.workspaces import workspace

URL_MAX = 2048
PARKED_ERROR_MAX = 500  # characters of the last error in a derivation.parked event
DELIVERY_ERROR_MAX = 500


def check_url(url: Any) -> str:
    """An endpoint's URL: http or https with a host, and not an IP address of this machine's or a private
    network's (a name is not resolved here: point it only at hosts you trust)."""
    if not isinstance(url, str) or not 1 <= len(url) <= URL_MAX or not storable(url):
        raise InvalidError(f"a webhook URL is 1 to {URL_MAX} characters", field=("url",))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidError("a webhook URL is http:// or https:// with a host", field=("url",))
    try:
        httpx.URL(url).copy_with()  # what the sender will parse (a bad port, an invalid host name)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidError(f"not a usable URL: {exc}", field=("url",)) from exc
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a name
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    ):
        raise InvalidError(
            f"a webhook may not point at {address}, a local or private address", field=("url",)
        )
    return url


async def add_endpoint(db: AsyncConnection, ws: str, url: Any, *, most: int) -> tuple[Record, bool]:
    """The workspace's endpoint for ``url``, added if new (and whether it was), at most ``most`` in all."""
    url = check_url(url)
    app = await workspace(db, ws)
    found = (
        await db.execute(
            select(WebhookEndpoint.id).where(WebhookEndpoint.app_id == app.id, WebhookEndpoint.url == url)
        )
    ).first()
    if found is None:
        await db.execute(text("SELECT id FROM apps WHERE id = :a FOR UPDATE"), {"a": app.id})  # counted alone
        count = (
            await db.execute(
                select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.app_id == app.id)
            )
        ).scalar_one()
        if count >= most:
            raise ConflictError(
                f"workspace {ws!r} has {count} webhook endpoints, the most allowed (webhook.max_endpoints): "
                "delete one first"
            )
    values = {"id": new_id(), "app_id": app.id, "url": url}
    return await fetch_or_create(db, WebhookEndpoint, values, ("app_id", "url"), "a webhook endpoint")


async def list_endpoints(db: AsyncConnection, ws: str, *, page: int = 1, size: int = 50) -> Page[Record]:
    app = await workspace(db, ws)
    return await page_of(db, WebhookEndpoint, [WebhookEndpoint.app_id == app.id], page=page, size=size)


async def delete_endpoint(db: AsyncConnection, ws: str, endpoint_id: str) -> None:
    check_name_findable(endpoint_id, what="webhook endpoint")
    app = await workspace(db, ws)
    gone = await db.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.app_id == app.id)
        .returning(WebhookEndpoint.id)
    )
    if gone.first() is None:
        raise NotFoundError(f"webhook endpoint {endpoint_id!r} not found")


async def test_event(db: AsyncConnection, ws: str) -> Event:
    """A ``test.event`` to the workspace's endpoints (404 for a workspace that is not there)."""
    app = await workspace(db, ws)
    rows = await db.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.url)
        .where(WebhookEndpoint.app_id == app.id)
        .order_by(WebhookEndpoint.seq)
    )
    return Event("test.event", {"workspace_id": ws}, app.id, [(row.id, row.url) for row in rows])


@dataclass(frozen=True, slots=True)
class Event:
    """An event to send, and where: the workspace's endpoints, (id, url) each."""

    type: str
    data: dict[str, Any]
    app_id: str
    endpoints: list[tuple[str, str]]

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.endpoints]


_QUEUE_EMPTY = text(
    """
    SELECT a.id AS app_id, a.name AS workspace, s.name AS session, u.name AS peer,
           array(SELECT w.id FROM webhook_endpoints w WHERE w.app_id = a.id ORDER BY w.seq) AS endpoint_ids,
           array(SELECT w.url FROM webhook_endpoints w WHERE w.app_id = a.id ORDER BY w.seq) AS urls
    FROM sessions s JOIN apps a ON a.id = s.app_id LEFT JOIN users u ON u.id = s.user_id
    WHERE s.id = :session
      AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.app_id = a.id)
      AND NOT EXISTS (SELECT 1 FROM derivation_queue q WHERE q.session_id = s.id AND q.status = 'pending')
    """
)


_PARKED = text(
    """
    SELECT a.id AS app_id, a.name AS workspace, s.name AS session,
           array(SELECT w.id FROM webhook_endpoints w WHERE w.app_id = a.id ORDER BY w.seq) AS endpoint_ids,
           array(SELECT w.url FROM webhook_endpoints w WHERE w.app_id = a.id ORDER BY w.seq) AS urls,
           array(
               SELECT q.message_id FROM derivation_queue q
               WHERE q.session_id = s.id AND q.message_id = ANY(:ids) AND q.status = 'parked' ORDER BY q.seq
           ) AS parked
    FROM sessions s JOIN apps a ON a.id = s.app_id
    WHERE s.id = :session AND EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.app_id = a.id)
    """
).bindparams(bindparam("ids", type_=ARRAY(Text)))


async def derivation_parked(
    db: AsyncConnection, session_id: str, message_ids: Sequence[str], error: str
) -> Event | None:
    """Rapport's ``derivation.parked`` event, for those of ``message_ids`` that were just parked after
    their last failed attempt (``rapport deriver retry`` revives them), if the session's workspace has
    endpoints; None otherwise."""
    row = (await db.execute(_PARKED, {"session": session_id, "ids": list(message_ids)})).first()
    if row is None or not row.parked:
        return None
    data = {
        "workspace_id": row.workspace,
        "session_id": row.session,
        "message_ids": list(row.parked),
        "error": error[:PARKED_ERROR_MAX],
    }
    return Event("derivation.parked", data, row.app_id, _endpoints(row))


async def queue_empty(db: AsyncConnection, session_id: str) -> Event | None:
    """Honcho's ``queue.empty`` event for a session whose derivation work is all done, if its workspace
    has endpoints; None otherwise. Rapport derives a v1 user's memory: observer = observed = the user."""
    row = (await db.execute(_QUEUE_EMPTY, {"session": session_id})).first()
    if row is None:
        return None
    data = {
        "workspace_id": row.workspace,
        "queue_type": "representation",
        "session_id": row.session,
        "observer": row.peer,
        "observed": row.peer,
    }
    return Event("queue.empty", data, row.app_id, _endpoints(row))


def _endpoints(row: Any) -> list[tuple[str, str]]:
    return list(zip(row.endpoint_ids, row.urls, strict=True))


# --- the outbox -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    url: str
    event_type: str
    body: str
    attempts: int


async def record(db: AsyncConnection, event: Event, body: str) -> int:
    """Queue ``body`` (the event, as it will be signed and sent) for each of the event's endpoints."""
    if not event.endpoints:
        return 0
    await db.execute(
        insert(WebhookDelivery).values(
            [
                {
                    "id": new_id(),
                    "app_id": event.app_id,
                    "endpoint_id": endpoint_id,
                    "url": url,
                    "event_type": event.type,
                    "body": body,
                }
                for endpoint_id, url in event.endpoints
            ]
        )
    )
    return len(event.endpoints)


async def claim_due(db: AsyncConnection, *, limit: int, lease_s: float) -> list[Delivery]:
    """Up to ``limit`` deliveries that are due, each counted as an attempt and held for ``lease_s``
    (a sender that dies mid-way leaves them due again then: delivery is at least once)."""
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.not_before <= func.now())
        .order_by(WebhookDelivery.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")  # locked once, as one set (a CTE that locks rows is evaluated once)
    )
    rows = await db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.c.id)
        .values(not_before=func.now() + timedelta(seconds=lease_s), attempts=WebhookDelivery.attempts + 1)
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.url,
            WebhookDelivery.event_type,
            WebhookDelivery.body,
            WebhookDelivery.attempts,
        )
    )
    return [Delivery(r.id, r.url, r.event_type, r.body, r.attempts) for r in rows]


async def delivered(db: AsyncConnection, delivery_id: str) -> None:
    await db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status="delivered", finished_at=func.now(), last_error=None)
    )


async def attempt_failed(
    db: AsyncConnection, delivery_id: str, error: str, *, retry_in_s: float | None
) -> None:
    """Record a failed attempt: due again in ``retry_in_s``, or failed for good (None)."""
    values: dict[str, Any] = {"last_error": error[:DELIVERY_ERROR_MAX]}
    if retry_in_s is None:
        values |= {"status": "failed", "finished_at": func.now()}
    else:
        values["not_before"] = func.now() + timedelta(seconds=retry_in_s)
    await db.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))


async def purge_finished(db: AsyncConnection, *, older_than_days: float) -> int:
    """Delete deliveries finished (delivered or failed) longer ago than ``older_than_days``."""
    gone = await db.execute(
        delete(WebhookDelivery)
        .where(
            WebhookDelivery.status != "pending",
            WebhookDelivery.finished_at < func.now() - timedelta(days=older_than_days),
        )
        .returning(WebhookDelivery.id)
    )
    return len(gone.all())


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    failed: int
    oldest_s: float


async def backlog(db: AsyncConnection) -> Backlog:
    row = (
        await db.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0)
                           AS oldest_s
                FROM webhook_deliveries
                """
            )
        )
    ).one()
    return Backlog(int(row.pending), int(row.failed), float(row.oldest_s))
