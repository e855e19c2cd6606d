"""An embedded control plane (`modelplane up --no-worker`: SQLite, folder artifacts, auth on)
and the admin and worker keys `up` saved on its first start."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.harness import Process, base_env, free_port, wait_for


@pytest.fixture(scope="package")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(scope="package")
def embedded(embedded_home: Path) -> Iterator[str]:
    home = embedded_home
    port = free_port()
    args = ["-m", "cli", "up", "--no-worker", "--home", str(home), "--port", str(port)]
    cp = Process(args, home / "up.log", base_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("control plane", lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, cp.log)
        yield url
    finally:
        cp.stop()


def _saved(home: Path, name: str) -> str:
    token: str = json.loads((home / name).read_text())["token"]
    return token


@pytest.fixture(scope="package")
def admin_token(embedded: str, embedded_home: Path) -> str:
    return _saved(embedded_home, "credentials.json")


@pytest.fixture(scope="package")
def worker_token(embedded: str, embedded_home: Path) -> str:
    return _saved(embedded_home, "worker-credentials.json")
