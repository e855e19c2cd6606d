"""Shadow traffic: a share of calls mirrored to a shadow revision after the caller got the
primary's answer, and the two answers compared.

Only calls whose request and answer were both held whole are mirrored (a streamed body is
gone once forwarded). A mirrored call waits in a bounded queue drained by a few workers; a
full queue drops it (counted as ``shadow_dropped``), so the shadow never slows or fails the
primary path. Counted under the shadow revision: ``calls``, ``errors``, the latency of the
mirrored calls, and ``shadow_calls``, ``shadow_errors``, ``shadow_compared`` (both answered
200) and ``shadow_disagreements``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.counts import Counts
from gateway.routes import Pool

log = logging.getLogger("modelplane.gateway")

REL_TOL = 1e-4
ABS_TOL = 1e-5


@dataclass(slots=True)
class Mirror:
    deployment: str
    pool: Pool
    method: str
    target: str  # path and query, forwarded unchanged
    headers: list[tuple[str, str]]
    body: bytes
    status: int  # the primary's answer
    content_type: str | None
    answer: bytes


class Shadow:
    """The queue of calls to mirror and the workers sending them."""

    def __init__(
        self,
        counts: Counts,
        http: Callable[[], aiohttp.ClientSession],
        *,
        queue: int = 256,
        workers: int = 4,
    ) -> None:
        self._counts = counts
        self._http = http
        self._size = queue
        self._queue: asyncio.Queue[Mirror] = asyncio.Queue(maxsize=queue)
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0

    def offer(self, mirror: Mirror) -> None:
        """Queue a mirrored call, or drop it when the queue is full."""
        try:
            self._queue.put_nowait(mirror)
        except asyncio.QueueFull:
            self.dropped += 1
            self._counts.tally(mirror.deployment, mirror.pool.revision).shadow_dropped += 1

    def start(self) -> None:
        if not self._tasks:
            self._queue = asyncio.Queue(maxsize=self._size)  # of this event loop
            self._tasks = [
                asyncio.create_task(self._work(), name=f"gateway-shadow-{i}")
                for i in range(self._workers)
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while True:
            mirror = await self._queue.get()
            try:
                await self._send(mirror)
            except Exception as exc:  # noqa: BLE001  a worker outlives any one call
                log.warning("shadow call of %r failed: %r", mirror.deployment, exc)

    async def _send(self, m: Mirror) -> None:
        tally = self._counts.tally(m.deployment, m.pool.revision)
        tally.shadow_calls += 1
        started = time.perf_counter()
        status = 599  # no answer: counted as an error
        try:
            url = m.pool.url() + m.target
            request = self._http().request(m.method, url, headers=m.headers, data=m.body)
            async with request as response:
                answer = await response.read()
                status = response.status
                content_type = response.headers.get("content-type")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("shadow call to revision %d failed: %r", m.pool.revision, exc)
            answer, content_type = b"", None
        tally = self._counts.tally(m.deployment, m.pool.revision)  # the window may have moved
        tally.call(status, time.perf_counter() - started)
        if status >= 500:
            tally.shadow_errors += 1
        if status == 200 and m.status == 200:
            tally.shadow_compared += 1
            if not agree(m.answer, m.content_type, answer, content_type):
                tally.shadow_disagreements += 1


def agree(a: bytes, a_type: str | None, b: bytes, b_type: str | None) -> bool:
    """Whether two answers say the same: tensors element-wise within tolerance (v2
    ``outputs`` by name, with shapes; v1 ``predictions``/``outputs``), other JSON equal,
    anything else (the v2 binary extension, non-JSON) byte for byte."""
    if not (_is_json(a_type) and _is_json(b_type)):
        return a == b
    try:
        x, y = orjson.loads(a), orjson.loads(b)
    except orjson.JSONDecodeError:
        return a == b
    if isinstance(x, dict) and isinstance(y, dict):
        if isinstance(x.get("outputs"), list) and isinstance(y.get("outputs"), list):
            return _v2_outputs_agree(x["outputs"], y["outputs"])
        for field in ("predictions", "outputs"):
            if field in x or field in y:
                return _close(x.get(field), y.get(field))
    return bool(x == y)


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";")[0].strip().endswith("json")


def _v2_outputs_agree(a: list[Any], b: list[Any]) -> bool:
    if not all(isinstance(t, dict) for t in (*a, *b)):
        return bool(a == b)
    by_name = {t.get("name"): t for t in b}
    if len(by_name) != len(a) or len(b) != len(a):
        return False
    for tensor in a:
        other = by_name.get(tensor.get("name"))
        if other is None or tensor.get("shape") != other.get("shape"):
            return False
        if not _close(_flat(tensor.get("data")), _flat(other.get("data"))):
            return False
    return True


def _flat(data: Any) -> Any:
    if not isinstance(data, list) or not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _close(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
