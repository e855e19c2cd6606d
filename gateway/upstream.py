"""Kept-alive HTTP/1.1 connections to the endpoints, for calls whose request body is held
whole (every usual inference call): the request goes out in one write, the answer is parsed
by httptools (the parser uvicorn uses) straight into what the stable URL sends back.

It does a fraction of a general client's work per call (no URL parsing, header multidicts,
cookie jars, timeouts as tasks), which on this hot path is most of the gateway's CPU time.
Requests streamed from the caller and ``HEAD`` still go through aiohttp. A connection is
reused only after a complete answer that allows keep-alive; one from the pool that turns out
closed by the endpoint (idle timeout) is replaced by a new one, once, before any answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from contract.http import NODELAY

CONNECT_S = 3.0
READ_S = 600.0
HIGH_WATER = 2**20  # buffered answer bytes before reading from the endpoint pauses
MAX_IDLE = 256  # idle connections kept per endpoint
Origin = tuple[str, int, bytes]  # host, port, Host header


class Broken(Exception):
    """The connection failed; ``answered``: part of an answer had arrived."""

    def __init__(self, reason: BaseException | None, answered: bool) -> None:
        super().__init__(repr(reason))
        self.answered = answered


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.begin()

    def begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.headed = False
        self.complete = False
        self.framed = False  # content-length or chunked: the end is known without EOF
        self.paused = False

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headed and not self.complete and not self.framed and exc is None:
            self.complete = True  # an answer delimited by the end of the connection
        elif not self.complete and self.error is None:
            self.error = exc or ConnectionResetError("the endpoint closed the connection")
        self._wake()

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.length = int(value)
            self.framed = True
        elif name == b"transfer-encoding":
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headed = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.parser.should_keep_alive():
            self.close()

    # -- for the caller --
    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self.error = TimeoutError(f"no answer from the endpoint in {READ_S:.0f} s")
        self.close()
        self._wake()

    async def headed_now(self) -> None:
        while not self.headed:
            await self._park()

    async def complete_now(self) -> None:
        while not self.complete:
            await self._park()

    async def _park(self) -> None:
        """Until the endpoint sends something, or `Broken`."""
        if self.error is not None:
            raise Broken(self.error, self.headed)
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._timer = loop.call_later(READ_S, self._expire)
        try:
            await self._waiter
        finally:
            self._timer.cancel()
            self._waiter = None
        if self.error is not None and not self.complete:
            raise Broken(self.error, self.headed)

    async def stream(self) -> AsyncIterator[bytes]:
        """The answer's body as it arrives (after the headers)."""
        while True:
            if self.chunks:
                chunks, self.chunks, self.buffered = self.chunks, [], 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                for chunk in chunks:
                    yield chunk
            elif self.complete:
                return
            else:
                await self._park()


class Upstream:
    """A pool of kept-alive connections per endpoint."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._origins: dict[str, Origin | None] = {}

    def origin(self, url: str) -> Origin | None:
        """``(host, port, Host header)`` of an ``http://`` endpoint URL, else ``None``."""
        origin = self._origins.get(url, False)
        if origin is False:
            parts = urlsplit(url)
            origin = None
            if parts.scheme == "http" and parts.hostname and not parts.path.strip("/"):
                origin = (parts.hostname, parts.port or 80, parts.netloc.encode("idna"))
            if len(self._origins) > 10_000:
                self._origins.clear()
            self._origins[url] = origin
        return origin  # type: ignore[return-value]

    async def open(self, origin: Origin, head: bytes, body: bytes) -> tuple[_Connection, bool]:
        """A connection that sent the request and read the answer's headers, and whether it
        had been pooled. `Broken` (nothing answered) when the endpoint cannot be reached."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            conn.begin()
            try:
                return await self._send(conn, origin, head, body), True
            except Broken as exc:
                conn.close()
                if exc.answered:
                    raise
                break  # closed by the endpoint while idle: a new connection, once
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_S):
                _, conn = await loop.create_connection(_Connection, origin[0], origin[1])
        except (OSError, TimeoutError) as exc:
            raise Broken(exc, False) from exc
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(*NODELAY[0])
        return await self._send(conn, origin, head, body), False

    async def _send(
        self, conn: _Connection, origin: Origin, head: bytes, body: bytes
    ) -> _Connection:
        assert conn.transport is not None
        conn.transport.write(
            b"".join(
                (
                    head,
                    b"host: ",
                    origin[2],
                    b"\r\ncontent-length: ",
                    str(len(body)).encode(),
                    b"\r\n\r\n",
                    body,
                )
            )  # fmt: skip
        )
        await conn.headed_now()
        return conn

    def release(self, origin: Origin, conn: _Connection) -> None:
        """Back to the pool after a complete answer (or closed, if it may not be reused)."""
        if conn.closed or not conn.complete or conn.error is not None:
            conn.close()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
