"""The stable URL's side of ASGI: request bodies held whole or streamed, and answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import orjson
from starlette.types import Receive, Send

STREAM_AFTER = 2**20  # bodies up to this size are held whole; larger ones are streamed
CHUNK = 2**18
_JSON = [(b"content-type", b"application/json")]
Answer: TypeAlias = tuple[int, list[tuple[bytes, bytes]], bytes]
Body: TypeAlias = "bytes | Streamed"


class Streamed:
    """A request body larger than ``STREAM_AFTER``: what was read, then the rest as it comes.
    ``started`` once a byte went to an endpoint (the call can no longer be retried)."""

    def __init__(self, head: list[bytes], receive: Receive) -> None:
        self._head = head
        self._receive = receive
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        for chunk in self._head:
            yield chunk
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError("the caller went away mid-body")
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return


async def read_body(receive: Receive) -> Body:
    """The whole request body, or past ``STREAM_AFTER`` what was read and the rest to come."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if size > STREAM_AFTER:
            return Streamed(chunks, receive)


async def respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def error(
    send: Send,
    status: int,
    message: str,
    *,
    retry: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps({"error": message})
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or ())]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
