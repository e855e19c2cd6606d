"""Process wiring: socket, uvicorn, the loader thread, SIGTERM drain, worker processes."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import uvicorn

from contract.asgi import nodelay_protocol
from contract.enums import EndpointStatus
from contract.optimize import OptimizeMode
from contract.supervise import supervise
from serving.app import ServingApp
from serving.artifacts import parse_signature, verify_sha256
from serving.batching import Batcher
from serving.lifecycle import HttpAnnouncer, Lifecycle, LoggingLifecycle
from serving.metrics import ServingMetrics
from serving.optimize import apply_optimization
from serving.runtimes import RuntimeOptions, runtime_for
from serving.runtimes.base import Runtime, example_input
from serving.settings import Executor, ModelFormat, ServingSettings

log = logging.getLogger("serving")


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: readiness goes 503 first, then uvicorn stops accepting, lets
    in-flight calls finish (bounded by `timeout_graceful_shutdown`) and returns.

    A drained SIGTERM is a clean exit (status 0), so unlike `uvicorn.Server.handle_exit`
    this does not record the signal for re-raising once the server has stopped."""

    def __init__(self, config: uvicorn.Config, app: ServingApp, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.serving_app = app
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.serving_app.draining:
            self.serving_app.draining = True
            self.lifecycle.changed(EndpointStatus.draining)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops waiting for in-flight calls
        else:
            self.should_exit = True


def make_lifecycle(settings: ServingSettings) -> Lifecycle:
    if settings.register_url is None:
        return LoggingLifecycle()
    endpoint = {
        "url": settings.advertise_url or f"http://{settings.host}:{settings.port}",
        "replica_id": settings.replica_id,
    }
    return HttpAnnouncer(
        settings.register_url,
        endpoint,
        settings.heartbeat_s,
        token=settings.token,
        request_id=settings.request_id,
    )


def bind(settings: ServingSettings, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


def build_app(settings: ServingSettings) -> ServingApp:
    """The app with its runtime, metrics and batcher; nothing is loaded yet."""
    options = RuntimeOptions(
        device=settings.device,
        signature=parse_signature(settings.signature),
        allow_pickle=settings.allow_pickle,
        intra_op_threads=settings.torch_threads,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
    )
    runtime = runtime_for(settings.format)(settings.format, options)
    metrics = ServingMetrics(settings.name, settings.version)
    batcher = Batcher(
        runtime,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue=settings.max_queue,
        wait_lone=settings.batch_wait_lone,
    )
    return ServingApp(
        settings.name,
        settings.version,
        runtime,
        batcher,
        metrics,
        platform=runtime.platform,
        max_request_bytes=settings.max_request_bytes,
    )


def uvicorn_config(app: ServingApp, settings: ServingSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=nodelay_protocol(),
        loop="uvloop",
        lifespan="off",
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through our handler (JSON when not a TTY)
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        backlog=4096,
    )


def serve(settings: ServingSettings, *, reuse_port: bool = False) -> int:
    """Run one serving process until SIGTERM; the exit status (0 after a clean drain)."""
    log.info(
        "serving %s version %s from %s on %s:%d",
        settings.name, settings.version, settings.path, settings.host, settings.port,
    )  # fmt: skip
    app = build_app(settings)
    lifecycle = make_lifecycle(settings)
    config = uvicorn_config(app, settings)
    server = DrainingServer(config, app, lifecycle)
    sock = bind(settings, reuse_port)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        failed = runner.run(_serve(server, sock, settings, lifecycle))
    app.batcher.stop()
    app.runtime.unload()
    if not failed:
        lifecycle.changed(EndpointStatus.stopped)
    lifecycle.close()
    return 1 if failed else 0


def _loop_factory() -> Any:
    import uvloop

    return uvloop.new_event_loop


async def _serve(
    server: DrainingServer, sock: socket.socket, settings: ServingSettings, lifecycle: Lifecycle
) -> str | None:
    """Serve while the model loads in the background; the failure reason, if any."""
    app = server.serving_app
    loop = asyncio.get_running_loop()
    failure: list[str] = []

    async def load() -> None:
        try:
            seconds = await loop.run_in_executor(None, _load, app, settings, lifecycle)
            await loop.run_in_executor(None, app.load_pipeline, settings.path)
            lifecycle.changed(EndpointStatus.warming)
            call_ms = await loop.run_in_executor(None, _time_call, app.runtime)
            inline = _choose_inline(settings, call_ms)
            log.info(
                "warm-up call %.2f ms: model runs %s",
                call_ms,
                "inline" if inline else "on a thread",
            )
            app.batcher.start(loop, inline=inline)
            await _warm_up(app)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("cannot serve %s: %s", settings.path, reason)
            failure.append(reason)
            lifecycle.changed(EndpointStatus.failed, reason)
            server.should_exit = True
            return
        app.metrics.load_seconds.set(seconds)
        app.mark_ready()
        lifecycle.changed(EndpointStatus.ready)

    loader = asyncio.create_task(load())
    await server.serve(sockets=[sock])
    if not loader.done():
        loader.cancel()
    return failure[0] if failure else None


def _load(app: ServingApp, settings: ServingSettings, lifecycle: Lifecycle) -> float:
    """Check the digests and load. Formats whose loading runs no code of the file's own
    (all but pickle) are hashed on a thread while they load, and the model serves only once
    the digests match; pickle is hashed first."""
    started = time.perf_counter()
    lifecycle.changed(EndpointStatus.loading)
    if settings.optimize.mode is not OptimizeMode.none:  # verifies, then makes and checks
        apply_optimization(app.runtime, settings, lifecycle.report)
        return time.perf_counter() - started
    if settings.sha256_verified:  # the worker's cache vouches for the bytes
        app.runtime.load(settings.path)
        return time.perf_counter() - started
    if settings.format == ModelFormat.pickle or not settings.sha256:
        verify_sha256(settings.path, settings.sha256)
        app.runtime.load(settings.path)
        return time.perf_counter() - started
    with ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool:
        check = pool.submit(verify_sha256, settings.path, settings.sha256)
        try:
            app.runtime.load(settings.path)
        except Exception:
            check.result()  # a digest mismatch explains a failed load best
            raise
        check.result()  # a mismatch raises: the loaded model never serves
    return time.perf_counter() - started


SLOW_CALL_MS = 50.0


def _time_call(runtime: Runtime) -> float:
    """Median of a few warm-up calls in ms (0 when inputs are unknown: no example to run)."""
    if not runtime.checked:
        return 0.0
    example = {s.name: example_input(s) for s in runtime.inputs}
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        runtime.predict(example)
        timings.append((time.perf_counter() - started) * 1000)
        if timings[-1] > SLOW_CALL_MS:  # far past any inline threshold: no need for more
            return timings[-1]
    return sorted(timings)[2]


def _choose_inline(settings: ServingSettings, call_ms: float) -> bool:
    if settings.executor is Executor.auto:
        return call_ms < settings.inline_max_ms
    return settings.executor is Executor.loop


async def _warm_up(app: ServingApp) -> None:
    """One call down the real path (queue, inference thread, future) before ready."""
    if app.runtime.checked:
        await app.batcher.submit({s.name: example_input(s) for s in app.runtime.inputs})


def run_workers(settings: ServingSettings, argv: list[str]) -> int:
    """N copies of this process on one port (SO_REUSEPORT: the kernel spreads connections).
    Each loads its own model; SIGTERM is passed on and each drains on its own."""
    if settings.port == 0:
        raise SystemExit("--workers > 1 needs a fixed --port")
    env = {**os.environ, "MODELPLANE_SERVING_WORKERS": "1", "MODELPLANE_SERVING_REUSE_PORT": "1"}
    children = [
        subprocess.Popen([sys.executable, "-m", "serving", *argv, "--workers", "1"], env=env)
        for _ in range(settings.workers)
    ]

    return supervise(children)
