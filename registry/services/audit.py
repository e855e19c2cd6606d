"""Audit events that no use case records itself: denied requests (401 and 403)."""

from __future__ import annotations

import logging
import re

from registry.db import SessionFactory
from registry.repositories.events import Actor, EventRepository

log = logging.getLogger("modelplane.audit")

_MODEL_PATH = re.compile(r"^/api/v1/models/([a-z0-9][a-z0-9._-]{0,62})(?:/|$)")
MAX_DETAIL = 300


async def record_denied(
    sessions: SessionFactory, actor: Actor, method: str, path: str, status: int, detail: str
) -> None:
    """One ``request.denied`` event; a failure to write it is logged, never raised (the
    answer has gone out already)."""
    match = _MODEL_PATH.match(path)
    try:
        async with sessions.begin() as session:
            await EventRepository(session).add(
                actor,
                "request.denied",
                model=match.group(1) if match else None,
                target=f"{method} {path}"[:1100],
                after={"status": status, "detail": detail[:MAX_DETAIL]},
            )
    except Exception:
        log.exception("could not record the denied %s %s (%d)", method, path, status)
