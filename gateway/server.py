"""The gateway process: `Gateway` over `RemoteRegistry`, served by uvicorn with
``/healthz`` (alive), ``/readyz`` (200 once a first route feed arrived), ``/metrics`` and
``/serve/...``. With the haproxy engine, HAProxy listens on the port and uvicorn on a
loopback port of its own behind it (`gateway.native`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from contract.asgi import nodelay_protocol
from contract.paths import SERVE_PREFIX
from contract.supervise import supervise
from gateway.app import Gateway
from gateway.native.engine import NativeEngine
from gateway.native.haproxy import find
from gateway.remote import RemoteRegistry
from gateway.settings import GatewaySettings

log = logging.getLogger("modelplane.gateway")
_ROOT = SERVE_PREFIX.rstrip("/")


class GatewayApp:
    """The process's ASGI app: the stable URL first, three small routes of its own."""

    def __init__(self, gateway: Gateway, engine: NativeEngine | None = None) -> None:
        self.gateway = gateway
        self.engine = engine
        self._stable = gateway.asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(SERVE_PREFIX):
            await self._stable({**scope, "root_path": _ROOT}, receive, send)
        elif path == "/healthz":
            await _plain(send, 200, b"ok\n")
        elif path == "/readyz":
            ready = self.engine.ready if self.engine is not None else self.gateway.ready
            await _plain(send, 200 if ready else 503, b"ready\n" if ready else b"no feed yet\n")
        elif path == "/metrics":
            body = generate_latest(self.gateway.metrics)
            await _plain(send, 200, body, CONTENT_TYPE_LATEST.encode())
        else:
            await _plain(send, 404, b"not found: the stable URL is /serve/{deployment}/...\n")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gateway.start()
                if self.engine is not None:
                    try:
                        await self.engine.start()
                    except Exception as exc:  # noqa: BLE001  said, and the process exits
                        await self.gateway.close()
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.engine is not None:
                    await self.engine.close()
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _plain(
    send: Send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8"
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build(
    settings: GatewaySettings, haproxy: str | None = None, slow: tuple[str, int] | None = None
) -> tuple[GatewayApp, RemoteRegistry]:
    """The app; with ``haproxy`` (its binary), HAProxy serves the settings' port and this
    app the loopback address ``slow`` behind it."""
    registry = RemoteRegistry(settings.registry_url, settings.token, wait_s=settings.wait_s)
    gateway = Gateway(
        fetch=registry.fetch,
        verifier=registry.verify,
        reporter=registry.report,
        auth=settings.auth,
        gateway_id=settings.gateway_id(),
        report_s=settings.report_s,
        shadow_queue=settings.shadow_queue,
        shadow_workers=settings.shadow_workers,
    )
    engine = None
    if haproxy is not None and slow is not None:
        engine = NativeEngine(
            gateway, binary=haproxy, host=settings.host, port=settings.port, slow=slow,
            auth=settings.auth, threads=settings.threads,
        )  # fmt: skip
    return GatewayApp(gateway, engine), registry


def engine_binary(settings: GatewaySettings) -> str | None:
    """HAProxy's path when it serves the port, ``None`` for the Python forwarder alone."""
    if settings.engine == "python" or (settings.engine == "auto" and settings.workers > 1):
        return None
    found = find(settings.haproxy)
    if found is None and settings.engine == "haproxy":
        raise SystemExit(f"python -m gateway: --engine haproxy needs HAProxy >= 2.6 "
                         f"({settings.haproxy!r} not found or older)")  # fmt: skip
    if found is None:
        log.warning("no HAProxy >= 2.6 found: the Python forwarder serves the port")
    return found


def serve(settings: GatewaySettings) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""
    haproxy = engine_binary(settings)
    if haproxy is not None and settings.workers > 1:
        raise SystemExit("python -m gateway: --workers is for --engine python; "
                         "HAProxy runs a thread per core (--threads)")  # fmt: skip
    if settings.workers > 1:
        return run_workers(settings)
    if haproxy is not None:
        sock = bind(settings.model_copy(update={"host": "127.0.0.1", "port": 0}))
        slow = ("127.0.0.1", sock.getsockname()[1])
    else:
        sock, slow = bind(settings), None
    app, registry = build(settings, haproxy, slow)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=nodelay_protocol(),
        loop="none",  # the runner below makes the loop (uvloop when installed)
        lifespan="on",
        proxy_headers=False,  # forwarded as they came; nothing here trusts them
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    log.info("gateway %s on %s:%d (%s) following %s", settings.gateway_id(), settings.host,
             settings.port, "haproxy" if haproxy else "python",
             settings.registry_url)  # fmt: skip

    async def main() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            await registry.aclose()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
    return 0 if server.started else 1


def bind(settings: GatewaySettings) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    return sock


def run_workers(settings: GatewaySettings) -> int:
    """``workers`` gateway processes on one port (SO_REUSEPORT: the kernel spreads the
    connections), each following the feed and reporting as ``{id}/w{n}``; SIGTERM and
    SIGINT are passed on. One that fails stops the others."""
    if settings.port == 0:
        raise SystemExit("python -m gateway: --workers > 1 needs a fixed --port")
    base = settings.gateway_id()
    env = {**os.environ, "MODELPLANE_GATEWAY_WORKERS": "1", "MODELPLANE_GATEWAY_REUSE_PORT": "1",
           "MODELPLANE_GATEWAY_ENGINE": "python"}  # fmt: skip
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "--workers", "1", "--id", f"{base}/w{n}"],
            env={**env, **_as_env(settings)},
        )
        for n in range(settings.workers)
    ]
    return supervise(children)


def _as_env(settings: GatewaySettings) -> dict[str, str]:
    """The settings for a worker's environment (not its command line: the token)."""
    values = settings.model_dump(
        exclude={"workers", "reuse_port", "id", "engine"}, exclude_none=True
    )
    return {f"MODELPLANE_GATEWAY_{k.upper()}": str(v) for k, v in values.items()}


def _loop_factory() -> Callable[[], Any] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
