"""Who is calling: the API key of a request, checked before any body is read.

``Authenticate`` (pure ASGI) checks the bearer token of every ``/api/`` and ``/serve/``
request against the database (``registry/services/keys.py``) and puts the caller in the
scope (``registry/principal.py``): 401 without a valid key. The stable URL skips FastAPI's
routing, so its scopes are checked here too (``policy.check_serve``); every other route's
are checked by ``policy.authorize``. With authentication off every caller is ``ANONYMOUS``.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.asgi import header
from registry.db import SessionFactory
from registry.errors import RegistryError, Unauthenticated
from registry.policy import check_serve
from registry.principal import ANONYMOUS, PRINCIPAL, REFUSED_KEY, Principal
from registry.problems import db_problem, problem
from registry.services.keys import authenticate, bearer_token
from registry.settings import Settings

AUTHENTICATED_PREFIXES = ("/api/", "/serve/")


class Authenticate:
    """ASGI middleware: the caller of ``/api/`` and ``/serve/``, from its API key."""

    def __init__(self, app: ASGIApp, sessions: SessionFactory, settings: Settings) -> None:
        self.app = app
        self.sessions = sessions
        self.enabled = settings.auth_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not self.enabled:
            scope[PRINCIPAL] = ANONYMOUS
        elif path.startswith(AUTHENTICATED_PREFIXES):
            try:
                await self._principal(scope)
            except RegistryError as exc:
                if (key_id := getattr(exc, "key_id", None)) is not None:
                    scope[REFUSED_KEY] = key_id  # a revoked or expired key: the audit names it
                await _deny(scope, receive, send, exc)
                return
            except (DBAPIError, PoolTimeout, OSError) as exc:
                await db_problem(Request(scope), exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal:
        token = bearer_token(header(scope, b"authorization"))
        principal = await authenticate(self.sessions, token)
        scope[PRINCIPAL] = principal  # the audit of a denial below names the key
        if scope["path"].startswith("/serve/"):
            await check_serve(self.sessions, principal, scope["path"])
        return principal


async def _deny(scope: Scope, receive: Receive, send: Send, exc: RegistryError) -> None:
    status = 401 if isinstance(exc, Unauthenticated) else 403
    if scope["path"].startswith("/serve/"):  # the inference protocol's error shape
        body = orjson.dumps({"error": str(exc)})
        raw = [(b"content-type", b"application/json")]
        if status == 401:
            raw.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return
    challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = problem(status, exc.code, str(exc), instance=scope["path"], headers=challenge)
    await response(scope, receive, send)
