"""The real server: several uvicorn workers, and no Nagle stall on keep-alive requests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.seaweed import free_ports

STARTUP_TIMEOUT = 30.0


def http_get(sock: socket.socket, path: str) -> tuple[int, float]:
    """One keep-alive GET on an open connection: (status, seconds until the whole answer)."""
    started = time.perf_counter()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), time.perf_counter() - started


SERVE = (
    "from registry.server import serve; from registry.settings import Settings; serve(Settings())"
)
# uvloop sets TCP_NODELAY itself; the plain asyncio loop does not (uvicorn issue 3149), so
# this variant shows our protocol class removes the ~40 ms stall on its own.
ASYNCIO_LOOP = [
    "-m",
    "uvicorn",
    "--factory",
    "registry.server:app_from_environment",
    "--workers",
    "2",
    "--loop",
    "asyncio",
    "--http",
    "contract.asgi:NoDelayProtocol",
    "--no-access-log",
]


@pytest.fixture(scope="module", params=["serve", "asyncio-loop"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
) -> Iterator[int]:
    home = tmp_path_factory.mktemp("served")
    shutil.copyfile(sqlite_template, home / "registry.db")
    port = free_ports(1)[0]
    env = os.environ | {
        "MODELPLANE_HOME": str(home),
        "MODELPLANE_PORT": str(port),
        "MODELPLANE_WORKERS": "2",
        "MODELPLANE_AUTH_ENABLED": "false",  # about processes and sockets, not keys
    }
    args = ["-c", SERVE] if request.param == "serve" else [*ASYNCIO_LOOP, "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_up(port, proc)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_until_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if http_get(sock, "/healthz")[0] == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the server did not start")


def test_keep_alive_requests_do_not_stall(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        for path in ("/healthz", "/api/v1/models", "/healthz", "/api/v1/models/none"):
            http_get(sock, path)  # warm up this worker
        timings = [http_get(sock, "/api/v1/models")[1] for _ in range(5)]
    # Nagle + delayed ACK would make every answer after the first take ~40 ms.
    assert min(timings) < 0.020, timings
    assert sorted(timings)[2] < 0.020, timings


def test_api_served_by_workers(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        assert http_get(sock, "/readyz")[0] == 200
        assert http_get(sock, "/api/v1/models/missing")[0] == 404
