"""Run the control plane under uvicorn (uvloop + httptools), one or several workers."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from asyncio import Transport
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from registry.app import create_app
from registry.fastpath import FastVersionReads
from registry.settings import Settings

# Worker processes rebuild the app from this (spawned workers share no memory with us).
SETTINGS_ENV = "MODELPLANE_SERVE_SETTINGS_JSON"


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """httptools, with Nagle off on every accepted connection.

    With ``--workers N`` uvicorn hands the workers a shared listening socket and the
    accepted connections keep Nagle's algorithm on (uvicorn issue 3149): a small response
    then waits for the client's delayed ACK, ~40 ms per keep-alive request after the first.
    """

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        sock: Any = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # The peer may already be gone; the protocol notices and reports that itself.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_environment() -> FastVersionReads:
    """The uvicorn app factory (runs in each worker): the app behind its hot-read front."""
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else Settings()
    app = FastVersionReads(create_app(settings))
    # The app's long-lived objects (routes, schemas, compiled statements) go out of the
    # collector's reach: full collections under load then stay short, and so does p99.
    gc.collect()
    gc.freeze()
    return app


def serve(settings: Settings) -> None:
    """Serve the API on ``settings.host:settings.port`` until interrupted."""
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run(
        "registry.server:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=NoDelayHttpToolsProtocol,
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=30,
        log_level="info",
    )
