"""Every control-plane request's id: the caller's ``X-Request-ID`` when sane, else a new one.

``RequestIds`` (pure ASGI) chooses it once per request, keeps it in the scope
(``request_id_of``: the audit events and a deployment's revisions carry it), puts it on the
log records while the request runs (``contract.logs.request_id``) and answers it back in
``X-Request-ID``. What counts as sane is ``contract.logs.sane_request_id``, shared with the
worker and serving processes. The hot-read front (``registry/fastpath.py``) answers before
this middleware runs and echoes the id itself.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import logs
from registry.asgi import header

REQUEST_ID = "modelplane.request_id"  # the scope key
_HEADER = logs.REQUEST_ID_HEADER.lower().encode()


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID``, when sane."""
    return logs.sane_request_id(header(scope, _HEADER))


def request_id_of(scope: Scope) -> str:
    """The id ``RequestIds`` chose (a new one outside it)."""
    rid = scope.get(REQUEST_ID)
    return rid if isinstance(rid, str) else logs.new_request_id()


class RequestIds:
    """ASGI middleware: one id per request, on the log records and answered back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = scope[REQUEST_ID] = incoming_request_id(scope) or logs.new_request_id()
        echoed = (_HEADER, rid.encode())

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", ()))
                headers.append(echoed)
                message = {**message, "headers": headers}
            await send(message)

        token = logs.request_id.set(rid)
        try:
            await self.app(scope, receive, answer)
        finally:
            logs.request_id.reset(token)
