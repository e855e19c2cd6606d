"""What the gateway's system tests run against: fake serving processes (real HTTP servers
in subprocesses), a control plane's side of the route feed (in-test callables, or a small
fake registry over HTTP: external interfaces from the gateway's point of view), load."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from contract.traffic import KeyCheck, KeyGrant, Lane, LaneRole, Route, RouteFeed, TrafficReport

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIELDS = ("calls", "errors", "shadow_calls", "shadow_errors", "shadow_compared",
          "shadow_disagreements", "shadow_dropped")  # fmt: skip
INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 3.0]}]}


def haproxy_binary() -> str:
    """HAProxy (>= 2.6) for the native data plane's tests: ``make test`` installs Debian's.
    Missing: skipped, or a failure with ``CI=true``."""
    from gateway.native.haproxy import find

    found = find()
    if found is None:
        message = "HAProxy >= 2.6 is not installed (apt-get install haproxy; make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(what)


class Process:
    """A subprocess with a port, waited for by ``ready_path``; stopped by PID."""

    def __init__(self, argv: list[str], port: int, log: Path, ready_path: str, **env: str):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )  # fmt: skip
        wait_until(
            f"{argv[1:3]} ready",
            lambda: (
                self.proc.poll() is None
                and httpx.get(self.url + ready_path, timeout=2).status_code == 200
            ),
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def fake_serving(tmp: Path, version: int, *, add: float = 0, fail_every: int = 0) -> Process:
    port = free_port()
    argv = [sys.executable, str(HERE / "fake_serving.py"), "--port", str(port), "--version",
            str(version), "--add", str(add), "--fail-every", str(fail_every)]  # fmt: skip
    return Process(argv, port, tmp / f"serving-{version}-{port}.log", "/v2/health/ready")


def lane(revision: int, version: int, role: str, percent: float, *servers: Process) -> Lane:
    return Lane(revision=revision, version=version, role=LaneRole(role), percent=percent,
                endpoints=[s.url for s in servers])  # fmt: skip


class ThreadServer:
    """An ASGI app served by uvicorn on a thread of this process (its own event loop)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until("thread server up", lambda: self.server.started, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ControlPlane:
    """The control plane's side, as the gateway sees it: the route feed (a long poll on a
    counter), key checks, and the reports it was sent. Thread-safe enough for tests."""

    def __init__(self, wait_s: float = 25.0) -> None:
        self.routes: list[Route] = []
        self.auth = False
        self.revoked: list[str] = []
        self.keys: dict[str, KeyGrant] = {}
        self.reports: list[TrafficReport] = []
        self.checks = 0
        self._n = 0
        self._wait_s = wait_s

    def publish(self, *routes: Route, auth: bool | None = None, revoked: list[str] | None = None):  # type: ignore[no-untyped-def]
        self.routes = list(routes) or self.routes
        if auth is not None:
            self.auth = auth
        if revoked is not None:
            self.revoked = revoked
        self._n += 1

    async def fetch(self, since: str | None) -> RouteFeed:
        deadline = time.monotonic() + self._wait_s
        while since == str(self._n) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return RouteFeed(cursor=str(self._n), auth=self.auth, routes=self.routes,
                         revoked_keys=self.revoked)  # fmt: skip

    async def verify(self, token: str) -> KeyGrant | None:
        self.checks += 1
        found = self.keys.get(token)
        if found is None or found.key_id in self.revoked:
            return None
        return found

    async def report(self, report: TrafficReport) -> None:
        self.reports.append(report)

    def counted(self, deployment: str) -> dict[int, dict[str, Any]]:
        """The reports' sums per revision."""
        out: dict[int, dict[str, Any]] = {}
        for report in list(self.reports):
            for c in report.counts:
                if c.deployment != deployment:
                    continue
                sums = out.setdefault(c.revision, {"latency": [0] * len(c.latency)})
                for field in FIELDS:
                    sums[field] = sums.get(field, 0) + getattr(c, field)
                sums["latency"] = [a + b for a, b in zip(sums["latency"], c.latency, strict=True)]
        return out


class FakeRegistry:
    """The three gateway endpoints of the control plane's HTTP API over a `ControlPlane`,
    for ``python -m gateway``; only ``token`` (the gateway's key) may use them."""

    def __init__(self, plane: ControlPlane, token: str) -> None:
        self.plane = plane
        self._auth = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if dict(scope["headers"]).get(b"authorization") != self._auth:
            await _json(send, 401, {"detail": "not the gateway's key"})
            return
        path = scope["path"]
        if path == "/api/v1/gateway/routes":
            query = dict(httpx.QueryParams(scope["query_string"].decode()))
            feed = await self.plane.fetch(query.get("since"))
            await _json(send, 200, feed.model_dump(mode="json"))
        elif path == "/api/v1/gateway/keys:verify":
            grant = await self.plane.verify(KeyCheck.model_validate_json(body).token)
            if grant is None:
                await _json(send, 401, {"detail": "invalid API key"})
            else:
                await _json(send, 200, grant.model_dump(mode="json"))
        elif path == "/api/v1/gateway/reports":
            await self.plane.report(TrafficReport.model_validate_json(body))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _json(send, 404, {"detail": "no such route"})


async def _json(send: Any, status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def load(
    url: str, n: int, *, concurrency: int = 8, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """``n`` v2 infer calls at ``url`` from ``concurrency`` threads, kept-alive clients."""
    local = threading.local()

    def one(_: int) -> httpx.Response:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
        return client.post(url, json=INFER, headers=headers)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))
