"""The raw-ASGI side every protocol shares: reading a bounded body, answering in two `send`
calls, `HttpError` (a status plus one line, rendered in each protocol's error shape), and
`Endpoint`: what a protocol front end needs of the serving app (`serving.app.ServingApp`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from serving.metrics import ServingMetrics
from serving.protocols.v2 import OutputTensor, ProtocolError, RequestInput, TensorSpec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
OCTETS = b"application/octet-stream"


class Endpoint(Protocol):
    """The one model a serving process answers for, as the protocols see it."""

    name: str
    version: str
    ready: bool  # loaded and warm
    draining: bool  # SIGTERM arrived
    inputs: list[TensorSpec]  # what calls send (a pipeline's BYTES inputs included)
    outputs: list[TensorSpec]  # what calls get back
    metrics: ServingMetrics

    @property
    def serving(self) -> bool: ...

    async def read_payload(self, scope: Scope, receive: Receive) -> bytes: ...

    async def run(self, items: list[RequestInput]) -> dict[str, OutputTensor]: ...

    def records(self, outputs: dict[str, OutputTensor]) -> list[Any] | None: ...


class HttpError(Exception):
    """Answered with `status`; `outcome` is the metrics label of the call."""

    def __init__(self, status: int, message: str, outcome: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.outcome = status, outcome


def header(scope: Scope, name: bytes) -> bytes:
    """One request header's value (`name` lower-case), b"" when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


async def read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise HttpError(413, f"request body exceeds {limit} bytes")
        return body
    chunks, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    *,
    header_length: int | None = None,
    retry: bool = False,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if header_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % header_length))
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def failure(exc: Exception) -> tuple[int, str, str]:
    """A failed call's status, one-line message and metrics outcome: 400 when the call does
    not fit the model, the `HttpError`'s own status, else 500 (the model failed)."""
    if isinstance(exc, ProtocolError):
        return 400, str(exc), "bad_request"
    if isinstance(exc, HttpError):
        return exc.status, str(exc), exc.outcome
    return 500, f"inference failed: {exc}", "error"
