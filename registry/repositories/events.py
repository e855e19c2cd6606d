"""SQL over the audit log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from registry.db import table_of, utcnow
from registry.repositories.base import Repository, glob_clause
from registry.tables import EventRow, OutboxRow

# A Core insert without RETURNING: nobody reads an event's id back inside the transaction.
INSERT_EVENT = insert(table_of(EventRow))
INSERT_OUTBOX = insert(table_of(OutboxRow))

# Audit actions webhooks can subscribe to, under their webhook event type.
WEBHOOK_TYPES = {
    "version.ready": "version.ready",
    "alias.moved": "alias.moved",
    "alias.rolled_back": "alias.moved",
    "deployment.revision_created": "deployment.revision_created",
    "deployment.rollout_finished": "rollout.finished",
    "deployment.failed": "rollout.failed",
    "deployment.canary_promoted": "canary.promoted",
    "deployment.canary_rolled_back": "canary.rolled_back",
}


def webhook_type(action: str, after: Any) -> str | None:
    """The webhook event type an audit event is, if any (some depend on the new state)."""
    if action == "version.created" and after == "ready":  # one-shot uploads are born ready
        return "version.ready"
    if action == "endpoint.status_changed" and isinstance(after, dict):
        return "endpoint.unhealthy" if after.get("status") == "unhealthy" else None
    return WEBHOOK_TYPES.get(action)


@dataclass(frozen=True)
class Actor:
    """Who makes a change and through which request (filled from the HTTP request)."""

    name: str = "anonymous"
    request_id: str | None = None
    client: str | None = None
    key_id: str | None = None


class EventRepository(Repository):
    async def add(
        self,
        actor: Actor,
        action: str,
        *,
        model: str | None,
        target: str | None = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Record the event; one webhooks may want also goes to the outbox, in the same
        transaction (the dispatcher delivers it later, never this request)."""
        event = {
            "time": utcnow(),
            "actor": actor.name,
            "action": action,
            "model": model,
            "target": target,
            "before": before,
            "after": after,
            "request_id": actor.request_id,
            "client": actor.client,
            "actor_key_id": actor.key_id,
        }
        await self._session.execute(INSERT_EVENT, event)
        if (kind := webhook_type(action, after)) is not None:
            event_id = uuid.uuid4().hex
            payload = {
                **event,
                "id": event_id,
                "type": kind,
                "time": event["time"].isoformat(),
            }
            del payload["client"], payload["actor_key_id"]
            await self._session.execute(
                INSERT_OUTBOX,
                {
                    "event_id": event_id,
                    "type": kind,
                    "payload": payload,
                    "created_at": event["time"],
                },
            )

    async def search(
        self,
        *,
        since: datetime | None,
        model: str | None,
        action: str | None,
        after: int | None,
        limit: int,
        newest_first: bool = False,
        target: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
        globs: tuple[str, ...] = (),
    ) -> list[EventRow]:
        """Events in id order; ``after`` is the last id of the previous page, in that order.
        ``globs``: only events about models whose name matches one (none: all)."""
        order = EventRow.id.desc() if newest_first else EventRow.id
        stmt = select(EventRow).order_by(order).limit(limit)
        if globs:
            stmt = stmt.where(glob_clause(EventRow.model, globs))
        if target is not None:
            stmt = stmt.where(EventRow.target == target)
        if key_id is not None:
            stmt = stmt.where(EventRow.actor_key_id == key_id)
        if request_id is not None:
            stmt = stmt.where(EventRow.request_id == request_id)
        if since is not None:
            stmt = stmt.where(EventRow.time >= since)
        if model is not None:
            stmt = stmt.where(EventRow.model == model)
        if action is not None:
            stmt = stmt.where(EventRow.action == action)
        if after is not None:
            stmt = stmt.where(EventRow.id < after if newest_first else EventRow.id > after)
        return list(await self._session.scalars(stmt))
