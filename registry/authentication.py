"""Who is calling: the API key of a request, checked before any body is read.

``Authenticate`` (pure ASGI) checks the bearer token of every ``/api/`` request against
the database (``registry/services/keys.py``) and puts the caller in the scope
(``registry/principal.py``): 401 without a valid key; each route's scopes are checked by
``policy.authorize``. With authentication off every caller is ``ANONYMOUS``. The stable URL
(``/serve/``) is not checked here: the gateway in front of it checks keys from its own
cache (``registry/embedded_gateway.py``), without a database round trip per call.
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.asgi import header
from registry.db import SessionFactory
from registry.errors import RegistryError, Unauthenticated
from registry.principal import ANONYMOUS, PRINCIPAL, REFUSED_KEY, Principal
from registry.problems import db_problem, problem
from registry.services.keys import authenticate, bearer_token
from registry.settings import Settings

AUTHENTICATED_PREFIX = "/api/"


class Authenticate:
    """ASGI middleware: the caller of ``/api/``, from its API key."""

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
        elif path.startswith(AUTHENTICATED_PREFIX):
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
        scope[PRINCIPAL] = principal  # the audit of a denial names the key
        return principal


async def _deny(scope: Scope, receive: Receive, send: Send, exc: RegistryError) -> None:
    status = 401 if isinstance(exc, Unauthenticated) else 403
    challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = problem(status, exc.code, str(exc), instance=scope["path"], headers=challenge)
    await response(scope, receive, send)
