"""Webhooks: subscriptions, and the dispatcher that delivers the outbox, signed, with retries.

An event a webhook may want is written to ``webhook_outbox`` in the transaction that
records it (``EventRepository.add``): the request that caused it never waits for a
receiver. The dispatcher (a task in every control-plane process, see ``registry/jobs.py``)
fans outbox rows out into one delivery per subscribed webhook, then POSTs due deliveries.

Each POST carries ``Modelplane-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 with the webhook's secret over ``f"{t}.{body}"`` (the raw body bytes), plus
``Modelplane-Event`` (the type), ``Modelplane-Delivery`` (the delivery id, stable across
retries) and ``Modelplane-Event-Id``. A 2xx answer delivers it; anything else (or no
answer within ``webhook_timeout_s``) is retried after ``webhook_backoff_s * 2**(n-1)``
seconds (capped at ``webhook_backoff_max_s``) until ``webhook_max_attempts``, then failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import orjson

from contract.schemas import DeliveryOut, Page, WebhookCreate, WebhookCreated, WebhookOut
from registry.db import SessionFactory, utcnow
from registry.metrics import ControlPlaneMetrics
from registry.repositories.base import decode_cursor
from registry.repositories.events import EventRepository
from registry.repositories.webhooks import OutboxRepository, WebhookRepository
from registry.services.context import Context
from registry.services.paging import to_page
from registry.settings import Settings
from registry.tables import DeliveryRow, WebhookRow

log = logging.getLogger("modelplane.webhooks")

SIGNATURE_HEADER = "Modelplane-Signature"
BATCH = 100
CONCURRENCY = 16  # deliveries in flight at once per process
MAX_ERROR = 500


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Modelplane-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: float = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _webhook_out(row: WebhookRow) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=row.events,  # type: ignore[arg-type]
        description=row.description,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _delivery_out(row: DeliveryRow) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        type=row.type,  # type: ignore[arg-type]
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        delivered_at=row.delivered_at,
        payload=row.payload,
    )


class WebhookService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions

    async def create_webhook(self, body: WebhookCreate) -> WebhookCreated:
        row = WebhookRow(
            id=uuid.uuid4().hex,
            url=body.url,
            secret=body.secret or "whsec_" + secrets.token_urlsafe(32),
            events=sorted({e.value for e in body.events}),
            description=body.description,
            created_by=self._ctx.actor.name,
            created_at=utcnow(),
        )
        async with self._sessions.begin() as session:
            await WebhookRepository(session).add(row)
            await EventRepository(session).add(
                self._ctx.actor,
                "webhook.created",
                model=None,
                target=f"webhook:{row.id}",
                after={"url": row.url, "events": row.events},
            )
            return WebhookCreated(**_webhook_out(row).model_dump(), secret=row.secret)

    async def list_webhooks(self, *, cursor: str | None, limit: int) -> Page[WebhookOut]:
        after = decode_cursor(cursor, str)
        async with self._sessions() as session:
            rows = await WebhookRepository(session).search(after=after, limit=limit + 1)
            return to_page(rows, limit, lambda r: r.id, _webhook_out)

    async def get_webhook(self, webhook_id: str) -> WebhookOut:
        async with self._sessions() as session:
            return _webhook_out(await WebhookRepository(session).get(webhook_id))

    async def delete_webhook(self, webhook_id: str) -> None:
        """The subscription and its delivery log go; nothing more is sent to it."""
        async with self._sessions.begin() as session:
            repo = WebhookRepository(session)
            row = await repo.get(webhook_id)
            await repo.delete(webhook_id)
            await EventRepository(session).add(
                self._ctx.actor,
                "webhook.deleted",
                model=None,
                target=f"webhook:{webhook_id}",
                before={"url": row.url, "events": row.events},
            )

    async def list_deliveries(
        self, webhook_id: str, *, cursor: str | None, limit: int
    ) -> Page[DeliveryOut]:
        before = decode_cursor(cursor, int)
        async with self._sessions() as session:
            repo = WebhookRepository(session)
            await repo.get(webhook_id)
            rows = await repo.deliveries(webhook_id, before=before, limit=limit + 1)
            return to_page(rows, limit, lambda r: r.id, _delivery_out)


class WebhookDispatcher:
    """Moves the outbox into deliveries and sends what is due. ``run_once`` is one pass;
    ``registry/jobs.py`` calls it every ``webhook_poll_s``."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        metrics: ControlPlaneMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._metrics = metrics
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self._settings.webhook_timeout_s, follow_redirects=False
            )
        return self._http

    async def run_once(self) -> int:
        """Fan out the outbox, then send due deliveries; returns how many were attempted."""
        while await self._fan_out() == BATCH:
            pass
        lease = timedelta(seconds=self._settings.webhook_timeout_s * 2 + 5)
        async with self._sessions.begin() as session:
            due = await OutboxRepository(session).claim_due(BATCH, lease)
        if due:
            limit = asyncio.Semaphore(CONCURRENCY)

            async def deliver(delivery: Any) -> None:
                async with limit:
                    await self._deliver(delivery)

            await asyncio.gather(*(deliver(d) for d in due))
        return len(due)

    async def prune(self) -> int:
        """Forget finished deliveries older than ``webhook_retention_s`` (the log is bounded)."""
        before = utcnow() - timedelta(seconds=self._settings.webhook_retention_s)
        async with self._sessions.begin() as session:
            return await OutboxRepository(session).prune(before)

    async def _fan_out(self) -> int:
        async with self._sessions.begin() as session:
            repo = OutboxRepository(session)
            events = await repo.claim_outbox(BATCH)
            if not events:
                return 0
            hooks = await WebhookRepository(session).all()
            queued = await repo.fan_out(events, hooks)
        if queued:
            log.debug("queued %d webhook deliveries for %d events", queued, len(events))
        return len(events)

    async def _deliver(self, delivery: Any) -> None:
        body = orjson.dumps(delivery.payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Modelplane-Webhooks/1",
            "Modelplane-Event": delivery.type,
            "Modelplane-Event-Id": str(delivery.payload.get("id", "")),
            "Modelplane-Delivery": str(delivery.id),
            SIGNATURE_HEADER: sign(delivery.secret, int(time.time()), body),
        }
        code: int | None = None
        error: str | None = None
        try:
            response = await self._client().post(delivery.url, content=body, headers=headers)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        await self._record(delivery, code, error)

    async def _record(self, delivery: Any, code: int | None, error: str | None) -> None:
        attempts = delivery.attempts + 1
        settings = self._settings
        if error is None:
            status, next_at = "delivered", None
        elif attempts >= settings.webhook_max_attempts:
            status, next_at = "failed", None
            log.warning(
                "webhook delivery %s to %s failed for good after %d attempts: %s",
                delivery.id, delivery.url, attempts, error,
            )  # fmt: skip
        else:
            delay = min(
                settings.webhook_backoff_s * 2 ** (attempts - 1), settings.webhook_backoff_max_s
            )
            status, next_at = "pending", utcnow() + timedelta(seconds=delay)
            log.info(
                "webhook delivery %s to %s failed (attempt %d, next in %.1fs): %s",
                delivery.id, delivery.url, attempts, delay, error,
            )  # fmt: skip
        if self._metrics is not None:
            outcome = "retry" if status == "pending" else status
            self._metrics.webhook_deliveries.labels(outcome).inc()
        async with self._sessions.begin() as session:
            await OutboxRepository(session).record_attempt(
                delivery.id,
                status=status,
                attempts=attempts,
                code=code,
                error=error,
                next_attempt_at=next_at,
            )
