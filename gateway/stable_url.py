"""The stable URL: ``/serve/{deployment}/...`` forwarded to the deployment's ready endpoints.

A raw ASGI app (no FastAPI routing, validation or dependency injection on the hot path),
mounted in front of the embedded control plane's API and served by ``python -m gateway``.
It knows nothing of the database: a `RouteTable` tells it each deployment's lanes. A call
goes to a lane chosen by the lanes' shares (or to its pinned version's), to the lane's next
endpoint, round robin, over pooled keep-alive connections (`Upstream`); a refused
connection, a dropped one, or a 503 (a draining endpoint) is retried on the lane's next
endpoint, then on the other lanes' (unpinned calls), so a rollout loses no call. Keys are
checked by a `KeyCache` when auth is on; the answers are counted per revision (`Counts`)
and a share mirrored to a shadow (`Shadow`).
Bodies up to ``STREAM_AFTER`` (every usual inference call) are held whole, so such a call
can be retried; a larger request body is streamed to the endpoint as it arrives (retried
elsewhere only if the endpoint could not be reached before the first byte went out), and a
larger answer is streamed back to the caller (server-sent events chunk by chunk). Answers
of its own are the inference protocol's ``{"error": ...}`` bodies. Nothing is logged per
call.
"""

from __future__ import annotations

import logging
import time
from typing import TypeAlias
from urllib.parse import quote

import aiohttp
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.paths import SERVE_PREFIX
from contract.traffic import VERSION_HEADER
from gateway.bodies import (
    CHUNK,
    STREAM_AFTER,
    Answer,
    Body,
    Streamed,
    error,
    read_body,
    respond,
)
from gateway.counts import Counts
from gateway.keys import Denied, KeyCache, Unverifiable
from gateway.routes import NoVersion, Plan, Pool, RouteTable, path_version
from gateway.shadow import Mirror, Shadow
from gateway.upstream import Broken, Origin, Upstream

HOLD_S = 1.0  # a call nothing can take waits this long for the next route table

log = logging.getLogger("modelplane.serve")

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library sets itself.
_DROP_REQUEST = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"content-length", b"expect",
     b"authorization"}  # the caller's API key is for the control plane, not the endpoint
)  # fmt: skip
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)


class _Sent(Exception):
    """The answer started going to the caller when forwarding broke: nothing to retry."""


PREFIX = SERVE_PREFIX


class _Refused:
    """A 503 answer (a draining endpoint), held for the caller if no other endpoint answers."""

    __slots__ = ("answer",)

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


# (status, the answer held whole or None when it was streamed, its content type, when its
# last byte went to the caller, or its headers for a streamed answer: the latency counted)
Reply: TypeAlias = tuple[int, bytes | None, str | None, float]
_MIRRORED = frozenset({"POST", "PUT"})  # inference calls; metadata differs between versions
_VERSION = VERSION_HEADER.encode()


class _Request:
    """What goes to an endpoint: the request line and headers rendered once, for retries."""

    __slots__ = ("method", "target", "raw", "body", "_head")

    def __init__(
        self, method: str, target: str, raw: list[tuple[bytes, bytes]], body: Body
    ) -> None:
        self.method = method
        self.target = target
        self.raw = raw
        self.body = body
        self._head: bytes | None = None

    def head(self) -> bytes:
        """Request line and headers, without ``host`` and ``content-length`` (`Upstream`)."""
        if self._head is None:
            lines = [f"{self.method} {self.target} HTTP/1.1\r\n".encode("latin-1")]
            lines += [b"%s: %s\r\n" % kv for kv in self.raw]
            self._head = b"".join(lines)
        return self._head

    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]


class StableUrl:
    """ASGI app serving ``/{deployment}/...`` (under ``root_path`` ``/serve``).

    ``auth``: check keys (``keys`` needed) whatever the table says; else whenever the
    table's latest feed says ``auth``."""

    def __init__(
        self,
        table: RouteTable,
        *,
        keys: KeyCache | None = None,
        counts: Counts | None = None,
        shadow: Shadow | None = None,
        auth: bool = False,
    ) -> None:
        self._table = table
        self._keys = keys
        self._counts = counts
        self.shadow = shadow
        self._auth = auth
        self._http: aiohttp.ClientSession | None = None
        self._upstream = Upstream()

    @property
    def table(self) -> RouteTable:
        return self._table

    async def close(self) -> None:
        self._upstream.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def client(self) -> aiohttp.ClientSession:
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
        started = time.perf_counter()
        name, _, rest = _route_path(scope).lstrip("/").partition("/")
        headers: list[tuple[bytes, bytes]] = []
        authorization = pin = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                authorization = v
            elif k not in _DROP_REQUEST:
                if k == _VERSION:
                    pin = v
                headers.append((k, v))
        plan = await self._admit(name, authorization, send)
        if plan is None:
            return
        path = "/" + rest
        if path in ("/v2/health/ready", "/v2/health/live") and scope["method"] == "GET":
            ok = plan.any_endpoint or path.endswith("live")
            await respond(send, 200 if ok else 503, [], b"")
            return
        try:
            version = _pinned(pin, path)
            pool, others = plan.choose(version)
            if pool is None and await self._table.changed(HOLD_S):
                # nothing ready in the table this gateway holds: the next may know better
                # (an endpoint that turned ready elsewhere reaches every gateway in a poll)
                plan = self._table.lookup(name) or plan
                pool, others = plan.choose(version)
        except NoVersion as exc:
            await error(send, 404, str(exc))
            return
        except ValueError:
            await error(send, 400, f"{VERSION_HEADER} must be a version number, not {pin!r}")
            return
        if pool is None:
            await error(send, 503, f"deployment {name!r} has no ready endpoint", retry=True)
            return
        body = await read_body(receive)
        target = quote(path, safe="/:@!$&'()*+,;=-._~%")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        method = scope["method"]
        request = _Request(method, target, headers, body)
        reply = await self._forward(send, plan, pool, others, request, started, version)
        # pinned calls are tests of one version; GETs (metadata) differ between versions
        if self.shadow is not None and reply is not None and version is None:
            status, answer, kind, _ = reply
            if answer is not None and method in _MIRRORED and type(body) is bytes:
                mirror = plan.mirror()
                if mirror is not None:
                    self.shadow.offer(
                        Mirror(name, mirror, method, target, request.headers(), body, status,
                               kind, answer)
                    )  # fmt: skip

    async def _admit(self, name: str, authorization: bytes | None, send: Send) -> Plan | None:
        """The deployment's plan when the call may go on; else its refusal went out: 401/403
        (a key, when auth is on), 404 (no such deployment)."""
        grant = None
        if self._keys is not None and (self._auth or self._table.auth):
            try:
                grant = await self._keys.check(authorization)
            except (Denied, Unverifiable) as exc:
                await _refuse(send, exc)
                return None
        plan = self._table.lookup(name)
        if plan is None:
            await error(send, 404, f"deployment {name!r} does not exist")
            return None
        if grant is not None:
            try:
                grant.reach(plan.model, name)
            except Denied as exc:
                await _refuse(send, exc)
                return None
        return plan

    async def _forward(
        self,
        send: Send,
        plan: Plan,
        pool: Pool,
        others: list[Pool],
        request: _Request,
        started: float,
        version: int | None = None,
        again: bool = True,
    ) -> Reply | None:
        """Forward to ``pool``'s endpoints, then the ``others``'; the caller's answer, counted
        under the revision that gave it. ``None`` when no answer could be held for a shadow.
        When no endpoint could take the call (and no byte of its body went out), it waits up
        to ``HOLD_S`` for the next route table and tries that once."""
        counts = self._counts
        body = request.body
        refused: tuple[Pool, _Refused] | None = None
        for lane in (pool, *others):
            for url in lane.order():
                try:
                    reply = await self._try(url, request, send)
                except _Sent:  # the caller got part of an answer; its connection tells
                    if counts is not None:
                        counts.tally(plan.name, lane.revision).call(502, _since(started))
                    return None
                if type(reply) is tuple:
                    if counts is not None:
                        counts.tally(plan.name, lane.revision).call(reply[0], reply[3] - started)
                    return reply
                if isinstance(reply, _Refused):
                    refused = (lane, reply)
                if isinstance(body, Streamed) and body.started:
                    if reply is None:
                        await self._failed(send, plan, lane, started)
                        return None
                    break  # its body went to that endpoint: not to be sent again
            else:
                continue
            break
        resent = isinstance(body, Streamed) and body.started
        if again and not resent and await self._table.changed(HOLD_S):
            fresh = self._table.lookup(plan.name)
            try:
                chosen = fresh.choose(version) if fresh is not None else (None, [])
            except NoVersion:
                chosen = (None, [])
            if fresh is not None and chosen[0] is not None:
                return await self._forward(
                    send, fresh, chosen[0], chosen[1], request, started, version, False
                )
        if refused is not None:
            lane, held = refused
            if counts is not None:
                counts.tally(plan.name, lane.revision).call(503, _since(started))
            await respond(send, *held.answer)
            return None
        if counts is not None:
            counts.tally(plan.name, pool.revision).call(503, _since(started))
        await error(send, 503, f"deployment {plan.name!r} has no ready endpoint", retry=True)
        return None

    async def _failed(self, send: Send, plan: Plan, lane: Pool, started: float) -> None:
        if self._counts is not None:
            self._counts.tally(plan.name, lane.revision).call(502, _since(started))
        await error(send, 502, f"endpoint of {plan.name!r} failed mid-call")

    async def _try(self, base: str, request: _Request, send: Send) -> Reply | _Refused | None:
        """The reply once the endpoint's answer went to the caller; a 503 answer (held, for
        the caller to try elsewhere); ``None`` if the endpoint cannot be reached."""
        body = request.body
        if type(body) is bytes and request.method != "HEAD":
            origin = self._upstream.origin(base)
            if origin is not None:
                return await self._exchange(origin, request, body, send)
        return await self._try_aiohttp(base + request.target, request, send)

    async def _exchange(
        self, origin: Origin, request: _Request, body: bytes, send: Send
    ) -> Reply | _Refused | None:
        """`_try` over `Upstream`: a call whose request body is held whole."""
        upstream = self._upstream
        try:
            conn, _ = await upstream.open(origin, request.head(), body)
        except Broken as exc:
            log.info("forward to %s failed (%s); trying the next endpoint", origin[:2], exc)
            return None
        sent = False
        try:
            status, length = conn.status, conn.length
            out = [(k, v) for k, v in conn.headers if k not in _DROP_RESPONSE]
            if status == 503 or (length is not None and length <= STREAM_AFTER):
                await conn.complete_now()
                content = conn.chunks[0] if len(conn.chunks) == 1 else b"".join(conn.chunks)
                upstream.release(origin, conn)
                if status == 503:
                    return _Refused((status, out, content))
                sent = True
                await respond(send, status, out, content)
                return status, content, _content_type(out), time.perf_counter()
            if length is not None:
                out.append((b"content-length", str(length).encode()))
            sent = True
            await send({"type": "http.response.start", "status": status, "headers": out})
            headed = time.perf_counter()
            async for chunk in conn.stream():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            upstream.release(origin, conn)
            return status, None, None, headed
        except Broken as exc:
            conn.close()
            if sent:
                raise _Sent from exc
            log.info("answer from %s broke off (%s); trying the next endpoint", origin[:2], exc)
            return None
        except BaseException:  # cancelled, or the caller's side failed: not reusable
            conn.close()
            raise

    async def _try_aiohttp(
        self, url: str, request: _Request, send: Send
    ) -> Reply | _Refused | None:
        """`_try` over aiohttp: request bodies streamed from the caller, ``HEAD``, https. A
        pooled connection the endpoint closed while idle gets one more try on a new one."""
        body = request.body
        headers = request.headers()
        method = request.method
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
                streamed = isinstance(body, Streamed) and body.started
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
    ) -> Reply | _Refused:
        data = body if isinstance(body, bytes) else body.chunks()
        async with self.client().request(method, url, headers=headers, data=data) as response:
            out = [
                (k, v)
                for k, v in ((k.lower(), v) for k, v in response.raw_headers)
                if k not in _DROP_RESPONSE
            ]
            status = response.status
            length = response.content_length
            if status == 503 or (length is not None and length <= STREAM_AFTER):
                content = await response.read()
                if status == 503:
                    return _Refused((status, out, content))
                sent[0] = True
                await respond(send, status, out, content)
                return status, content, response.headers.get("content-type"), time.perf_counter()
            if length is not None:
                out.append((b"content-length", str(length).encode()))
            sent[0] = True
            await send({"type": "http.response.start", "status": status, "headers": out})
            headed = time.perf_counter()
            async for chunk in response.content.iter_chunked(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return status, None, None, headed


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


def _pinned(header: bytes | None, path: str) -> int | None:
    """The version a call is pinned to: by its path, else by ``Modelplane-Version``."""
    version = path_version(path)
    if version is None and header is not None:
        version = int(header)  # ValueError: a 400
    return version


def _content_type(headers: list[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k == b"content-type":
            return v.decode("latin-1")
    return None


def _since(started: float) -> float:
    return time.perf_counter() - started


async def _refuse(send: Send, exc: Denied | Unverifiable) -> None:
    if isinstance(exc, Unverifiable):
        await error(send, 503, str(exc), retry=True)
        return
    extra = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else []
    await error(send, exc.status, str(exc), headers=extra)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
