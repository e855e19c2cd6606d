"""Schemathesis over the control plane's OpenAPI: every operation, bounded examples.

A real server process (`modelplane server`: SQLite, folder store, auth on) with an admin key
and a little data (a model with a ready version and an alias, so some generated calls land
on things that exist). Every answer must be a non-5xx that conforms to the documented
status codes, content types, headers and schemas.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.harness import Process, base_env, free_port, mint, wait_for
from registry.app import create_app
from registry.settings import Settings

MAX_EXAMPLES = 20
# uvicorn's own answer to bytes its HTTP parser rejects, before any application code runs
UNPARSEABLE = "Invalid HTTP request received."
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz")
    database_url = f"sqlite+aiosqlite:///{home / 'registry.db'}"
    port = free_port()
    env = {
        **base_env(),
        "MODELPLANE_HOME": str(home),
        "MODELPLANE_HOST": "127.0.0.1",
        "MODELPLANE_PORT": str(port),
        "MODELPLANE_MAX_UPLOAD_BYTES": str(2**20),
    }
    process = Process(["-m", "cli", "server", "--migrate"], home / "server.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("server", lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, process.log)
        served = Server(url, mint(database_url, "fuzz", ["admin"]))
        _seed(served)
        yield served
        assert process.process.poll() is None, "the server died under fuzzing\n" + process.log()
    finally:
        process.stop()


def _seed(server: Server) -> None:
    data = b"fuzz weights"
    digest = hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=server.headers) as http:
        http.post("/models", json={"name": "fuzz"}).raise_for_status()
        manifest = {"files": [{"path": "model.pt", "size": len(data), "sha256": digest}]}
        http.post("/models/fuzz/versions", json=manifest).raise_for_status()
        http.put("/models/fuzz/versions/1/files/model.pt", content=data).raise_for_status()
        http.post("/models/fuzz/versions/1/finalize").raise_for_status()
        http.put("/models/fuzz/aliases/production", json={"version": 1}).raise_for_status()


def _document() -> dict[str, Any]:
    """The OpenAPI document the server serves (same code; settings do not change it)."""
    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Settings(home=Path(tmp), _env_file=None)).openapi()  # type: ignore[call-arg]


schema = schemathesis.openapi.from_dict(_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_conform_and_never_5xx(case: Any, server: Server) -> None:
    response = case.call(base_url=server.url, headers=server.headers, timeout=30)
    if response.status_code == 400 and response.text == UNPARSEABLE:
        return  # not HTTP (e.g. a garbled Transfer-Encoding): uvicorn refused it, no app ran
    case.validate_response(response, checks=CHECKS)
