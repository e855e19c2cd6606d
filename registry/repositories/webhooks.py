"""SQL over webhook subscriptions, the outbox and the delivery log."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from registry.db import table_of, utcnow
from registry.errors import WebhookNotFound
from registry.repositories.base import Repository
from registry.tables import DeliveryRow, OutboxRow, WebhookRow


class WebhookRepository(Repository):
    async def add(self, row: WebhookRow) -> WebhookRow:
        self._session.add(row)
        await self._session.flush()
        return row

    async def get(self, webhook_id: str) -> WebhookRow:
        if (row := await self._session.get(WebhookRow, webhook_id)) is None:
            raise WebhookNotFound(webhook_id)
        return row

    async def search(self, *, after: str | None, limit: int) -> list[WebhookRow]:
        stmt = select(WebhookRow).order_by(WebhookRow.id).limit(limit)
        if after is not None:
            stmt = stmt.where(WebhookRow.id > after)
        return list(await self._session.scalars(stmt))

    async def all(self) -> list[WebhookRow]:
        return list(await self._session.scalars(select(WebhookRow)))

    async def delete(self, webhook_id: str) -> None:
        await self._session.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id))

    async def deliveries(
        self, webhook_id: str, *, before: int | None, limit: int
    ) -> list[DeliveryRow]:
        """Newest first."""
        stmt = (
            select(DeliveryRow)
            .where(DeliveryRow.webhook_id == webhook_id)
            .order_by(DeliveryRow.id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(DeliveryRow.id < before)
        return list(await self._session.scalars(stmt))


class OutboxRepository(Repository):
    """The dispatcher's side. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` on Postgres,
    so several control-plane replicas share the work without waiting on each other; SQLite
    serializes writers (``BEGIN IMMEDIATE``) and ignores the clause."""

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        stmt = (
            select(OutboxRow).order_by(OutboxRow.id).limit(limit).with_for_update(skip_locked=True)
        )
        return list(await self._session.scalars(stmt))

    async def fan_out(self, events: list[OutboxRow], hooks: list[WebhookRow]) -> int:
        """Deliveries for each event to each webhook subscribed to its type; the events
        leave the outbox. Returns how many deliveries were queued."""
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {
                "webhook_id": hook.id,
                "event_id": event.event_id,
                "type": event.type,
                "payload": event.payload,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for event in events
            for hook in hooks
            # a webhook gets what happened after it was created, not older outbox rows
            if event.type in hook.events and event.created_at >= hook.created_at
        ]
        if rows:
            await self._session.execute(insert(table_of(DeliveryRow)), rows)
        ids = [e.id for e in events]
        await self._session.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))
        return len(rows)

    async def claim_due(self, limit: int, lease: timedelta) -> list[Any]:
        """Due pending deliveries with their webhook's url and secret. Each is leased
        (``next_attempt_at`` moved ahead): if this process dies mid-send, another retries."""
        now = utcnow()
        due = (
            select(DeliveryRow.id)
            .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now)
            .order_by(DeliveryRow.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list(await self._session.scalars(due))
        if not ids:
            return []
        await self._session.execute(
            update(DeliveryRow).where(DeliveryRow.id.in_(ids)).values(next_attempt_at=now + lease)
        )
        stmt = (
            select(
                DeliveryRow.id,
                DeliveryRow.type,
                DeliveryRow.payload,
                DeliveryRow.attempts,
                WebhookRow.url,
                WebhookRow.secret,
            )
            .join(WebhookRow, WebhookRow.id == DeliveryRow.webhook_id)
            .where(DeliveryRow.id.in_(ids))
        )
        return list((await self._session.execute(stmt)).all())

    async def prune(self, before: datetime) -> int:
        """Drop finished deliveries (delivered or failed) created before ``before``."""
        result = await self._session.execute(
            delete(DeliveryRow).where(
                DeliveryRow.status != "pending", DeliveryRow.created_at < before
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def record_attempt(
        self,
        delivery_id: int,
        *,
        status: str,
        attempts: int,
        code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
    ) -> None:
        values: dict[str, Any] = {
            "status": status,
            "attempts": attempts,
            "last_status_code": code,
            "last_error": error,
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if status == "delivered":
            values["delivered_at"] = utcnow()
        await self._session.execute(
            update(DeliveryRow).where(DeliveryRow.id == delivery_id).values(**values)
        )
