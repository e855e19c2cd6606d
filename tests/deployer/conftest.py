"""An embedded control plane (`modelplane up --no-worker`: SQLite, folder artifacts)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.platform import Process, base_env, free_port, wait_for


@pytest.fixture(scope="package")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("embedded")
    port = free_port()
    args = ["-m", "client", "up", "--no-worker", "--home", str(home), "--port", str(port)]
    cp = Process(args, home / "up.log", base_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("control plane", lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, cp.log)
        yield url
    finally:
        cp.stop()
