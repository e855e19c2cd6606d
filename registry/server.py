"""Run the control plane under uvicorn (uvloop + httptools), one or several workers."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import shutil

import uvicorn

from contract.asgi import nodelay_protocol
from contract.logs import configure_logging
from registry.app import create_app
from registry.fastpath import FastVersionReads
from registry.metrics import MULTIPROC_ENV
from registry.settings import Settings

# Worker processes rebuild the app from this (spawned workers share no memory with us).
SETTINGS_ENV = "MODELPLANE_SERVE_SETTINGS_JSON"
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def return_big_buffers_to_the_os() -> None:
    """Serve allocations of 1 MiB and more from their own mappings, freed at once (glibc).

    Uploads and downloads churn through 8 MiB buffers on many threads. glibc's default
    raises its mmap threshold to the largest block freed (up to 32 MiB), after which such
    buffers come from per-thread arenas that keep the memory: measured, the control
    plane's RSS ratcheted up ~40 MB per 512 MiB moved and peaked >100 MB above its base;
    with a fixed threshold it returns to its base after each transfer. No-op off glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 2**20)


def app_from_environment() -> FastVersionReads:
    """The uvicorn app factory (runs in each worker): the app behind its hot-read front."""
    return_big_buffers_to_the_os()
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else Settings()
    configure_logging(settings.log_format, settings.log_level, static={"process": "registry"})
    app = FastVersionReads(create_app(settings))
    # The app's long-lived objects (routes, schemas, compiled statements) go out of the
    # collector's reach: full collections under load then stay short, and so does p99.
    gc.collect()
    gc.freeze()
    return app


def serve(settings: Settings) -> None:
    """Serve the API on ``settings.host:settings.port`` until interrupted."""
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    configure_logging(settings.log_format, settings.log_level, static={"process": "registry"})
    if settings.workers > 1:
        use_multiprocess_metrics(settings)
    uvicorn.run(
        "registry.server:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=nodelay_protocol(),
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # when h11 is the parser
        log_level=settings.log_level,
        log_config=None,  # our handler (JSON when not on a terminal) for uvicorn's loggers
        # uvicorn kills a worker process that does not answer its ping within this; its
        # default (5 s) killed workers still importing on a loaded machine, over and over
        timeout_worker_healthcheck=60,
    )


def use_multiprocess_metrics(settings: Settings) -> None:
    """Worker processes write their samples under ``$MODELPLANE_HOME/prometheus/<port>``
    (emptied now: samples of processes from an earlier run would be summed in) and
    ``/metrics`` sums every process's. An explicit ``PROMETHEUS_MULTIPROC_DIR`` wins."""
    if os.environ.get(MULTIPROC_ENV):
        return
    path = settings.home / "prometheus" / str(settings.port)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path.resolve())
