"""Real `python -m serving` processes on free loopback ports, shared across tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.serving.models import Artifact, build_artifacts

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One serving process; stopped by PID (SIGTERM, then SIGKILL after a bound)."""

    def __init__(
        self, args: list[str], log_dir: Path, label: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{label}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args, "--port", str(self.port)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log}")
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    return build_artifacts(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


SHARED = {
    "mlp_ts": ["--max-delay-ms", "2", "--executor", "thread"],
    "mlp_pt2": ["--max-batch-size", "1"],
    "cnn": ["--max-delay-ms", "5", "--batch-wait-lone"],
    "two": [],
    "dtypes": [],
    "text": [],
}


@pytest.fixture(scope="session")
def servers(artifacts: dict[str, Artifact], log_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    """All shared servers, started together: their imports and loads overlap."""
    started = {
        key: ServerProcess(artifacts[key].args() + extra, log_dir, key)
        for key, extra in SHARED.items()
    }
    weights = artifacts["weights"]
    started["weights"] = ServerProcess(  # settings from the environment only
        [],
        log_dir,
        "weights",
        env={
            "MODELPLANE_SERVING_NAME": weights.name,
            "MODELPLANE_SERVING_FORMAT": weights.format,
            "MODELPLANE_SERVING_PATH": str(weights.path),
            "MODELPLANE_SERVING_SHA256": orjson.dumps(weights.sha256).decode(),
        },
    )
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


StartServer = Callable[..., ServerProcess]  # (args, label, env=None)


@pytest.fixture
def start_server(log_dir: Path) -> Iterator[StartServer]:
    """Starts dedicated servers for one test (drain, overload) and stops them after it."""
    mine: list[ServerProcess] = []

    def start(args: list[str], label: str, env: dict[str, str] | None = None) -> ServerProcess:
        mine.append(ServerProcess(args, log_dir, label, env))
        return mine[-1]

    yield start
    for server in mine:
        server.stop()
