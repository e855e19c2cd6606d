"""Every refused request (401 or 403) is an audit event: who (key, client), what, why.

``AuditDenials`` (pure ASGI, just outside ``Authenticate``) watches the answers of
``registry/authentication.py`` and of the routes (``policy.authorize``) and, once a 401 or
403 has gone out, records it (``services/audit.py``), with the detail of its body.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.db import SessionFactory
from registry.principal import PRINCIPAL, REFUSED_KEY, principal_of
from registry.repositories.events import Actor
from registry.request_ids import request_id_of
from registry.services.audit import record_denied

DENIED = (401, 403)
MAX_BODY = 4096  # what is kept of a denial's body, for its detail


class AuditDenials:
    """ASGI middleware: an audit event per 401/403 answer, after it has been sent."""

    def __init__(self, app: ASGIApp, sessions: SessionFactory) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = _Seen(send)
        await self.app(scope, receive, seen.send)
        if seen.status in DENIED:
            await self._audit(scope, seen)

    async def _audit(self, scope: Scope, seen: _Seen) -> None:
        principal = principal_of(scope) if PRINCIPAL in scope else None
        client = scope.get("client")
        actor = Actor(
            name=principal.name if principal is not None else "anonymous",
            request_id=request_id_of(scope),
            client=client[0] if client else None,
            key_id=principal.key_id if principal is not None else scope.get(REFUSED_KEY),
        )
        try:
            answer = orjson.loads(seen.body)
            detail = str(answer.get("detail") or answer.get("error") or "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = ""
        await record_denied(
            self.sessions, actor, scope["method"], scope["path"], seen.status, detail
        )


class _Seen:
    """Wraps ``send``: keeps the status, and the start of a 401/403 body for its detail."""

    __slots__ = ("_send", "status", "body")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif self.status in DENIED and len(self.body) < MAX_BODY:
            self.body += message.get("body", b"")[:MAX_BODY]
        await self._send(message)
