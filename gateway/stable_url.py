"""The stable URL: ``/serve/{deployment}/v2/...`` forwarded to the deployment's ready endpoints.

A raw ASGI app (no FastAPI routing, validation or dependency injection on the hot path),
put in front of the control plane's API by ``registry.app.create_app`` (``ServeFront``) in
the embedded process. It knows nothing of the database: an ``EndpointSource`` tells it a
deployment's ready endpoint URLs (``None``: no such deployment). Each call goes to the next
ready endpoint, round robin, over pooled keep-alive connections; a refused connection, a
dropped one, or a 503 (a draining endpoint) is retried on the next endpoint, so a rollout
loses no call. Bodies up to ``STREAM_AFTER`` (every usual inference call) are held whole,
so such a call can be retried; a larger request body is streamed to the endpoint as it
arrives (retried elsewhere only if the endpoint could not be reached before the first byte
went out), and a larger answer is streamed back to the caller. Which endpoints are ready is
asked of the source at most once per ``cache_s`` per deployment (concurrent callers share
the answer), and asked afresh when a forward fails or this process changes the
deployment's endpoints. Answers of its own are the inference protocol's
``{"error": ...}`` bodies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import quote

import aiohttp
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.paths import SERVE_PREFIX

log = logging.getLogger("modelplane.serve")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library sets itself.
_DROP_REQUEST = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"content-length",
     b"authorization"}  # the caller's API key is for the control plane, not the endpoint
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)
_JSON = [(b"content-type", b"application/json")]
MAX_CACHED = 10_000
STREAM_AFTER = 2**20  # bodies up to this size are held whole; larger ones are streamed
CHUNK = 2**18
Answer: TypeAlias = tuple[int, list[tuple[bytes, bytes]], bytes]
Body: TypeAlias = "bytes | _Streamed"
EndpointSource: TypeAlias = Callable[[str], Awaitable[list[str] | None]]
"""A deployment's ready endpoint URLs, or ``None`` when there is no such deployment."""


class _Streamed:
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


class _Sent(Exception):
    """The answer started going to the caller when forwarding broke: nothing to retry."""


PREFIX = SERVE_PREFIX


@dataclass
class _Entry:
    urls: list[str] | None  # None: no such deployment
    expires: float
    turn: itertools.count[int] = field(default_factory=itertools.count)


class StableUrl:
    """ASGI app serving ``/{deployment}/v2/...`` (under ``root_path`` ``/serve``)."""

    def __init__(self, source: EndpointSource, *, cache_s: float = 0.5) -> None:
        self._source = source
        self._ttl = cache_s
        self._cache: dict[str, _Entry] = {}
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._http: aiohttp.ClientSession | None = None

    def forget(self, deployment: str) -> None:
        """Read the deployment's endpoints afresh on its next call (this process changed
        them; other processes catch up within ``cache_s``)."""
        self._cache.pop(deployment, None)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=600),
                auto_decompress=False,  # bytes pass through as the endpoint encoded them
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        name, _, rest = _route_path(scope).lstrip("/").partition("/")
        entry = await self._entry(name) if name else None
        if entry is None or entry.urls is None:
            await _error(send, 404, f"deployment {name!r} does not exist")
            return
        path = "/" + rest
        if path in ("/v2/health/ready", "/v2/health/live") and scope["method"] == "GET":
            ok = bool(entry.urls) or path.endswith("live")
            await _respond(send, 200 if ok else 503, [], b"")
            return
        body = await _read_body(receive)
        target = quote(path, safe="/:@!$&'()*+,;=-._~%")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        await self._forward(scope, send, name, entry, target, body)

    async def _forward(
        self, scope: Scope, send: Send, name: str, entry: _Entry, target: str, body: Body
    ) -> None:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in _DROP_REQUEST
        ]
        last: Answer | None = None
        for attempt in range(2):  # the second pass on a freshly read endpoint list
            urls = entry.urls or []
            start = next(entry.turn)
            for i in range(len(urls)):
                url = urls[(start + i) % len(urls)] + target
                try:
                    answer = await self._try(scope["method"], url, headers, body, send)
                except _Sent:
                    return  # the caller got part of an answer; its connection tells the rest
                if answer is True:
                    return
                if answer is None or answer is False:
                    self._cache.pop(name, None)
                    if isinstance(body, _Streamed) and body.started:
                        await _error(send, 502, f"endpoint of {name!r} failed mid-call")
                        return
                    continue
                last = answer
                self._cache.pop(name, None)
                if isinstance(body, _Streamed):
                    break  # its body went to that endpoint: not to be sent again
            if isinstance(body, _Streamed) and body.started:
                break
            if attempt == 0:
                fresh = await self._entry(name)
                if fresh is None or not fresh.urls or fresh.urls == urls:
                    break
                entry = fresh
        if last is not None:
            await _respond(send, *last)
            return
        await _error(send, 503, f"deployment {name!r} has no ready endpoint", retry=True)

    async def _try(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: Body,
        send: Send,
    ) -> Answer | bool | None:
        """``True`` once the endpoint's answer went to the caller; a 503 answer (held, for
        the caller to try elsewhere); ``None`` if the endpoint cannot be reached. A pooled
        connection the endpoint closed while idle gets one more try on a new connection."""
        sent = [False]
        for again in (True, False):
            try:
                return await self._call(method, url, headers, body, send, sent)
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                aiohttp.ClientPayloadError,  # the endpoint died with its answer half read
            ) as exc:
                if sent[0]:
                    raise _Sent from exc
                streamed = isinstance(body, _Streamed) and body.started
                if again and not streamed and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                log.info("forward to %s failed (%r); trying the next endpoint", url, exc)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if sent[0]:
                    raise _Sent from exc
                log.info("forward to %s failed (%r); trying the next endpoint", url, exc)
            return None
        return None

    async def _call(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: Body,
        send: Send,
        sent: list[bool],
    ) -> Answer | bool:
        data = body if isinstance(body, bytes) else body.chunks()
        async with self._client().request(method, url, headers=headers, data=data) as response:
            out = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.items()
                if k.lower() not in _DROP_RESPONSE
            ]
            length = response.content_length
            if response.status == 503 or (length is not None and length <= STREAM_AFTER):
                content = await response.read()
                if response.status == 503:
                    return response.status, out, content
                sent[0] = True
                await _respond(send, response.status, out, content)
                return True
            if length is not None:
                out.append((b"content-length", str(length).encode()))
            sent[0] = True
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            async for chunk in response.content.iter_chunked(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return True

    async def _entry(self, name: str) -> _Entry | None:
        entry = self._cache.get(name)
        if entry is not None and entry.expires > time.monotonic():
            return entry
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name, entry))
            self._loading[name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(name, None))
        try:
            return await asyncio.shield(loading)
        except Exception as exc:  # the source is away: serve what we knew, if anything
            log.warning("endpoints of %r unreadable: %r", name, exc)
            return entry

    async def _load(self, name: str, old: _Entry | None) -> _Entry:
        urls = await self._source(name)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        entry = _Entry(urls, time.monotonic() + self._ttl)
        if old is not None:
            entry.turn = old.turn  # keep rotating where we were
        self._cache[name] = entry
        return entry


class ServeFront:
    """ASGI middleware: ``/serve/...`` goes to the stable URL, anything else to the app."""

    def __init__(self, app: ASGIApp, stable: StableUrl) -> None:
        self.app = app
        self.stable = stable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.stable({**scope, "root_path": PREFIX.rstrip("/")}, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _read_body(receive: Receive) -> Body:
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
            return _Streamed(chunks, receive)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, message: str, *, retry: bool = False) -> None:
    body = orjson.dumps({"error": message})
    headers: list[Any] = [*_JSON, (b"content-length", str(len(body)).encode())]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
