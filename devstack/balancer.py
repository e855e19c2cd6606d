"""A tiny TCP load balancer: round robin over backends, one choice per connection.

The stand-in for docker-compose's nginx in `modelplane stack`: bytes pass through untouched
(so the `Host` the client used reaches the control plane, which builds its URLs from it), and
a backend that refuses the connection is skipped for the next one. It runs on its own event
loop in a thread of the process that starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading

log = logging.getLogger("modelplane.balancer")
CONNECT_TIMEOUT_S = 3.0
CHUNK = 1 << 16


class Balancer:
    def __init__(self, listen: list[tuple[str, int]], backends: list[tuple[str, int]]) -> None:
        if not listen or not backends:
            raise ValueError("a balancer needs at least one address to listen on and a backend")
        self.listen = list(listen)
        self.backends = list(backends)
        self.bound: list[tuple[str, int]] = []  # the actual addresses (port 0 → a free one)
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, timeout: float = 10.0) -> Balancer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the balancer did not start")
        if self._error is not None:
            raise RuntimeError(f"the balancer cannot listen: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        servers: list[asyncio.Server] = []
        try:
            for host, port in self.listen:
                server = await asyncio.start_server(self._accept, host, port)
                servers.append(server)
                self.bound.append(server.sockets[0].getsockname()[:2])
        except OSError as exc:
            self._error = exc
        self._ready.set()
        if self._error is None:
            await self._stopping.wait()
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = next(self._turn)
        for i in range(len(self.backends)):
            host, port = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
                )
                break
            except (OSError, TimeoutError) as exc:
                log.info("backend %s:%d refused (%r); trying the next", host, port, exc)
        else:
            return  # every backend is down: the client sees the connection closed
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on (the other direction may go on)."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
