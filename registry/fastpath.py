"""A thin ASGI front that answers the hottest read before FastAPI sees it.

``GET /api/v1/models/{name}/versions/{v}`` (deployments resolving ``@production``) is most
of the control plane's traffic. Through FastAPI it pays route matching, dependency
injection, the middleware stack and response re-validation: about half of each request's
CPU. Here a found version is answered directly, with the same service call and the same
serializer as the documented route (``routes/versions.py``), so the bytes are identical.
Anything else (other routes, a bad name or selector, no such version, a database error,
a missing, invalid or insufficient API key) goes to the FastAPI app untouched, so every
error is still its problem+json answer (and a denied call its audit event).
"""

from __future__ import annotations

import logging
import re
import time

from fastapi import FastAPI
from pydantic import TypeAdapter
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from contract.logs import new_request_id
from contract.paths import API_PREFIX
from contract.schemas import SLUG, Scope, VersionOut
from registry.asgi import header
from registry.db import reading_connection, utcnow
from registry.errors import InvalidSelector, Unauthenticated
from registry.repositories.events import Actor
from registry.repositories.keys import read_detail_with_key
from registry.repositories.versions import read_detail
from registry.request_ids import incoming_request_id
from registry.selectors import parse_selector
from registry.services.context import Context
from registry.services.keys import bearer_token, record_use, token_prefix, verify_key
from registry.services.version_views import version_out

log = logging.getLogger("modelplane.registry")

_VERSION_PATH = re.compile(rf"^{API_PREFIX}/models/([^/]+)/versions/([^/]+)$")
ROUTE = f"{API_PREFIX}/models/{{name}}/versions/{{v}}"  # the FastAPI route's template
_NAME = re.compile(SLUG)
_HEADERS = [(b"content-type", b"application/json")]
_JSON = TypeAdapter(VersionOut)  # what FastAPI serializes a ``-> VersionOut`` route with


class FastVersionReads:
    """Wraps the app; ``app.state`` is the app's own (same engine, store and settings)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state
        # Reads record no events, so one context (anonymous actor, no request id) serves all.
        s = app.state
        self._context = Context(s.sessions, s.store, s.settings, Actor())
        self._auth = bool(s.settings.auth_enabled)
        self._observe = s.metrics.observe_http

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        # FastAPI's middleware never sees these answers: count them here (one histogram
        # observe); the request id is answered back as the app does.
        start = time.perf_counter()
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("root_path")
            and (match := _VERSION_PATH.match(scope["path"]))
            and (body := await self._answer(scope, *match.groups())) is not None
        ):
            rid = incoming_request_id(scope) or new_request_id()
            headers = [
                *_HEADERS,
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            self._observe("GET", ROUTE, 200, time.perf_counter() - start)
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: AsgiScope, name: str, raw_selector: str) -> bytes | None:
        if not _NAME.match(name):
            return None
        try:
            selector = parse_selector(raw_selector)
            token = bearer_token(header(scope, b"authorization")) if self._auth else None
        except (InvalidSelector, Unauthenticated):
            return None
        prefix = token_prefix(token) if token is not None else None
        if token is not None and prefix is None:
            return None
        now = utcnow()
        try:
            async with reading_connection(self._context.sessions) as connection:
                if prefix is None:
                    rows = await read_detail(connection, name, selector)
                else:  # the key rides along the read: one round trip for both
                    rows, key = await read_detail_with_key(connection, name, selector, prefix)
            if token is not None and rows:
                check = verify_key(key, token, now)
                if not (check.principal.has(Scope.read) and check.principal.reaches(name)):
                    return None
                if check.stale:
                    await record_use(self._context.sessions, check.principal, now)
        except Exception as exc:  # the FastAPI app retries and maps it to its problem
            log.debug("fast read of %s/%s deferred: %r", name, raw_selector, exc)
            return None
        if not rows:
            return None
        return _JSON.dump_json(version_out(self._context, name, rows), by_alias=True)
