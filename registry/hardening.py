"""Limits and response headers every request gets, before any key is checked.

``Hardening`` (pure ASGI) refuses oversized headers (431) and request bodies over
``max_request_bytes`` (413, counted as they stream, whatever Content-Length says), except on
the routes that stream uploads (they enforce ``max_upload_bytes`` themselves) and the stable
URL (its own cap). Pages a browser renders (``/ui``, ``/docs``, ``/redoc``) get security
headers (those the page does not set itself): no sniffing, no framing, a content security
policy, no referrer.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.problems import problem
from registry.settings import Settings

# Routes whose bodies are file bytes, streamed and bounded by ``max_upload_bytes``.
_UPLOADS = re.compile(r"^/api/v1/models/[^/]+/versions(?::upload|/[^/]+/files/.+)$")
_BROWSER_PAGES = ("/ui", "/docs", "/redoc")
# /docs and /redoc (registry/docs.py) load their bundles from this origin and start them
# with an inline script; ReDoc runs a worker from a blob.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
BROWSER_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class Hardening:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_header_bytes = settings.max_header_bytes
        self.max_request_bytes = settings.max_request_bytes
        self.ui_csp = settings.ui_csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        size = sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self.max_header_bytes or len(headers) > MAX_HEADER_COUNT:
            detail = f"request headers are limited to {self.max_header_bytes} bytes"
            await problem(431, "headers-too-large", detail, instance=scope["path"])(
                scope, receive, send
            )
            return
        path: str = scope["path"]
        if path.startswith(_BROWSER_PAGES):
            send = _with_headers(send, self._browser_headers(path))
        if path.startswith("/serve/") or _UPLOADS.match(path):
            await self.app(scope, receive, send)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_request_bytes:
            await self._too_large(scope, receive, send)
            return
        await _Bounded(self, scope, receive, send).run()

    def _browser_headers(self, path: str) -> list[tuple[bytes, bytes]]:
        csp = self.ui_csp if path.startswith("/ui") else _DOCS_CSP.encode()
        return [*BROWSER_HEADERS, (b"content-security-policy", csp)]

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request bodies are limited to {self.max_request_bytes} bytes here"
        await problem(413, "request-too-large", detail, instance=scope["path"])(
            scope, receive, send
        )


MAX_HEADER_COUNT = 100


class _Bounded:
    """Runs the app with a ``receive`` that stops at the body limit: past it the caller
    gets 413 (if no answer has started) and the app sees the client disconnect."""

    def __init__(self, outer: Hardening, scope: Scope, receive: Receive, send: Send) -> None:
        self.outer, self.scope, self._receive, self._send = outer, scope, receive, send
        self.received = 0
        self.started = False
        self.refused = False

    async def run(self) -> None:
        await self.outer.app(self.scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.outer.max_request_bytes:
                self.refused = True
                if not self.started:
                    await self.outer._too_large(self.scope, self._receive, self._send)
                    self.started = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the 413 went out; whatever the app answers after is dropped
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """Adds the headers the answer does not set itself (the dashboard sets its own CSP)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", ()))
            present = {k.lower() for k, _ in headers}
            headers += [(k, v) for k, v in extra if k not in present]
            message = {**message, "headers": headers}
        await send(message)

    return sending
