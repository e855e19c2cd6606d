"""`NativeEngine`: HAProxy in front of a `Gateway`, kept in step with it.

The `Gateway` (the Python forwarder, on a loopback port of its own) follows the route feed
and checks keys as ever. The engine listens to it:

- each route table it applies is rendered (`gateway.native.config.render`); when the text
  differs from what HAProxy serves, HAProxy reloads (no connection dropped);
- HAProxy's per-server counters are read every ``stats_s`` (`gateway.native.stats`) and its
  log lines counted as they come (`gateway.native.logs`), both into the gateway's `Counts`;
- each key a call passed the slow path with, if HAProxy can check it alone (it may read and
  has no model globs), goes into HAProxy's keys map through the runtime API: that key's next
  calls take the native path. A key dropped (revoked or expired, from the feed; evicted) is
  taken out the same way, and an expiring key at its expiry time.

Map changes and reloads run in one task, in order, so a key never misses a reload: the map
file a reload reads is written from the keys held at that moment, and changes made while the
new worker starts are sent to it once it answers.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.app import Gateway
from gateway.keys import Grant
from gateway.native.config import Layout, render
from gateway.native.haproxy import HAProxy, HAProxyError
from gateway.native.logs import LogCounter, listen
from gateway.native.stats import StatsCounter, parse

log = logging.getLogger("modelplane.gateway")
PREFIX = "modelplane-gateway-"  # HAProxy's files: a temporary directory per gateway process
ABANDONED_S = 60.0


class NativeEngine:
    """HAProxy on ``host:port``, its slow path ``slow`` (where ``gateway.asgi`` is served)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        binary: str,
        host: str,
        port: int,
        slow: tuple[str, int],
        auth: bool = False,
        threads: int | None = None,
        stats_s: float = 0.25,
    ) -> None:
        self.gateway = gateway
        self._binary = binary
        self._host, self._port, self._slow = host, port, slow
        self._auth = auth
        self._threads = threads
        self._directory: Path | None = None
        self.haproxy: HAProxy | None = None
        self.layout: Layout | None = None
        self.counter = LogCounter(gateway.counts, self._first_revision)
        self.stats = StatsCounter(gateway.counts)
        self._stats_s = stats_s
        self._poll: asyncio.Task[None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._text = ""
        self._mapped: set[str] = set()  # key hashes HAProxy holds (or is about to)
        self._ops: deque[str] = deque()  # runtime API commands not yet sent
        self._dirty = True  # the table changed since the last render
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # HAProxy serves a table the follower applied
        gateway.metrics.register(_NativeCollector(self))

    @property
    def ready(self) -> bool:
        return self.gateway.ready and self.synced.is_set()

    async def start(self) -> None:
        """Start HAProxy (everything to the slow path until the first table) and follow."""
        _remove_abandoned(Path(tempfile.gettempdir()))
        self._directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        self._transport, log_port = await listen(self.counter)
        self.layout = Layout(
            host=self._host,
            port=self._port,
            slow=self._slow,
            logs=("127.0.0.1", log_port),
            admin=self._directory / "admin.sock",
            keys=self._directory / "keys.map",
            threads=self._threads,
        )
        self.layout.keys.write_text("")
        self.haproxy = HAProxy(self._binary, self._directory)
        self._text = self._render()
        await self.haproxy.start(self._text)
        self.gateway.table.listeners.append(self._changed)
        self.gateway.keys.watch = self
        self._task = asyncio.create_task(self._run(), name="gateway-native")
        self._poll = asyncio.create_task(self._read_stats(), name="gateway-native-stats")
        if self.gateway.ready:
            self._changed()
        log.info("HAProxy %s serving %s:%d (pid %s)", self._binary, self._host, self._port,
                 self.haproxy.pid)  # fmt: skip

    async def close(self) -> None:
        for task in (self._task, self._poll):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._poll = None
        if self.haproxy is not None and self.haproxy.running():
            await self._read_stats_once()  # the last counts, for the gateway's last report
        if self.haproxy is not None:
            await self.haproxy.stop()
        if self._transport is not None:
            self._transport.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    # ---- told by the gateway (on its event loop, never blocking) ----

    def granted(self, digest: str, grant: Grant) -> None:
        if digest in self._mapped or not grant.reads or grant.globs:
            return
        left = None if grant.expires is None else grant.expires - time.time()
        if left is not None and left <= 0:
            return
        self._mapped.add(digest)
        self._send(f"add map {self._keys_path()} {digest} 1")
        if left is not None:
            asyncio.get_running_loop().call_later(left, self.dropped, digest)

    def dropped(self, digest: str) -> None:
        if digest in self._mapped:
            self._mapped.discard(digest)
            self._send(f"del map {self._keys_path()} {digest}")

    def _changed(self) -> None:
        self._dirty = True
        self._wake.set()

    # ---- the one task that talks to HAProxy ----

    def _send(self, command: str) -> None:
        self._ops.append(command)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._dirty and self.gateway.ready:
                self._dirty = False
                try:
                    await self._sync()
                except (HAProxyError, OSError) as exc:
                    log.error("HAProxy kept its last configuration: %s", exc)
            while self._ops:
                command = self._ops[0]
                try:
                    answer = await self._haproxy().runtime(command)
                except OSError as exc:
                    log.warning("HAProxy runtime API failed (%r); retrying", exc)
                    await asyncio.sleep(0.1)
                    continue
                self._ops.popleft()
                if answer.strip() and not answer.lower().startswith("done"):
                    log.debug("HAProxy %r: %s", command, answer.strip())

    async def _read_stats(self) -> None:
        while True:
            await asyncio.sleep(self._stats_s)
            await self._read_stats_once()

    async def _read_stats_once(self) -> None:
        try:
            answer = await self._haproxy().runtime("show info;show stat")
        except OSError as exc:
            log.warning("HAProxy's counters could not be read (%r)", exc)
            return
        self.stats.add(*parse(answer))

    async def _sync(self) -> None:
        text = self._render()
        if text != self._text:
            haproxy = self._haproxy()
            # the new worker reads the keys held now; changes from here on are sent to it
            self._ops.clear()
            _write_map(Path(self._keys_path()), self._mapped)
            started = time.perf_counter()
            await self._read_stats_once()  # the old worker's counts, as late as can be
            await haproxy.reload(text)
            self._text = text
            log.info("HAProxy reloaded in %.0f ms (worker %s)",
                     (time.perf_counter() - started) * 1000, haproxy.worker_pid)  # fmt: skip
        self.synced.set()

    def _render(self) -> str:
        assert self.layout is not None
        table = self.gateway.table
        return render(self.layout, table.routes(), auth=self._auth or table.auth)

    def _haproxy(self) -> HAProxy:
        assert self.haproxy is not None
        return self.haproxy

    def _keys_path(self) -> str:
        assert self.layout is not None
        return str(self.layout.keys)

    def _first_revision(self, deployment: str) -> int | None:
        plan = self.gateway.table.lookup(deployment)
        if plan is None or not plan.pools:
            return None
        return plan.pools[0].revision


class _NativeCollector(Collector):
    """``/metrics``: what HAProxy answered itself, its keys, its reloads."""

    def __init__(self, engine: NativeEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        yield CounterMetricFamily(
            "modelplane_gateway_native_calls",
            "Calls HAProxy answered itself (counted from its log lines)",
            value=engine.counter.lines,
        )
        yield CounterMetricFamily(
            "modelplane_gateway_native_unreadable",
            "HAProxy log lines that could not be read (not counted)",
            value=engine.counter.unreadable,
        )
        yield GaugeMetricFamily(
            "modelplane_gateway_native_keys",
            "API keys HAProxy checks itself (sha256 in its keys map)",
            value=len(engine._mapped),
        )
        reloads = engine.haproxy.reloads if engine.haproxy is not None else 0
        yield CounterMetricFamily(
            "modelplane_gateway_native_reloads", "HAProxy configuration reloads", value=reloads
        )


def _remove_abandoned(tmp: Path) -> None:
    """Directories of gateways that died by SIGKILL (their HAProxy went with them): older
    than a minute, and nothing answers on their master socket."""
    for directory in tmp.glob(PREFIX + "*"):
        try:
            if time.time() - directory.stat().st_mtime < ABANDONED_S:
                continue
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(directory / "master.sock"))
        except (FileNotFoundError, ConnectionRefusedError):
            shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue  # not ours to judge (permissions): left alone


def _write_map(path: Path, digests: set[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{d} 1\n" for d in sorted(digests)))
    tmp.replace(path)
