"""The stable URL, ``/serve/{deployment}/v2/...``, against a real control plane (uvicorn on a
loopback port) and a real serving process registered through ``POST /endpoints``:
tritonclient works through it (metadata, JSON and binary infer), a dead endpoint is
retried past, and no ready endpoint is a 503 with Retry-After."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as triton
import uvicorn

from registry.app import create_app
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.deploying import database_url, pg_template  # noqa: F401  (fixtures)
from tests.serving.conftest import ServerProcess, free_port
from tests.serving.models import MLP

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}
X = np.arange(8, dtype=np.float32).reshape(2, 4)


class Plane:
    """The control plane under uvicorn in a thread of its own (its own event loop)."""

    def __init__(self, settings: Settings, store: FileSystemArtifactStore) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, store=store)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="control-plane")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "no control plane"
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url + "/api/v1", timeout=10)

    def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def plane(settings: Settings, fs_artifacts: FileSystemArtifactStore) -> Iterator[Plane]:
    running = Plane(settings, fs_artifacts)
    yield running
    running.stop()


def publish_mlp(plane: Plane, tmp_path: Path, model: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    module = MLP((4, 8, 2)).eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module), path)
    data = path.read_bytes()
    plane.call("POST", "/models", 201, json={"name": model})
    files = {"file": ("model.pt", data)}
    form = {"format": "torchscript"}
    plane.call("POST", f"/models/{model}/versions:upload", 201, files=files, data=form)
    return path, module


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise TimeoutError(what)


def test_stable_url_forwards_to_ready_endpoints(plane: Plane, tmp_path: Path) -> None:
    model, name = f"m-{uuid.uuid4().hex[:8]}", "mlp"
    path, module = publish_mlp(plane, tmp_path, model)
    stable = f"{plane.url}/serve/{name}"
    ghost = httpx.get(f"{plane.url}/serve/ghost/v2/health/ready")
    assert ghost.status_code == 404 and "ghost" in ghost.json()["error"]
    body = {"name": name, "model": model, "version": 1, "replicas": 2}
    plane.call("POST", "/deployments", 201, json=body)
    unready = httpx.get(f"{stable}/v2/models/{name}")
    assert unready.status_code == 503 and unready.headers["retry-after"] == "1"
    assert "error" in unready.json()
    assert httpx.get(f"{stable}/v2/health/ready").status_code == 503

    worker = plane.call("POST", "/workers", 201, json={"name": "t", "cpu_slots": 2})["id"]
    beat = plane.call("POST", f"/workers/{worker}/heartbeat", json={"replicas": []})
    live, dead = (a["replica_id"] for a in beat["assignments"])
    serving = ServerProcess(
        [
            *("--name", name, "--format", "torchscript", "--path", str(path)),
            *("--signature", orjson.dumps(SIGNATURE).decode(), "--heartbeat-s", "0.5"),
            *("--register-url", f"{plane.url}/api/v1", "--replica-id", live),
        ],
        tmp_path,
        "serving",
    )
    try:
        serving.wait_ready()
        wait_for(
            "endpoint ready", lambda: httpx.get(f"{stable}/v2/health/ready").status_code == 200
        )
        # a second, dead endpoint: calls that land on it are retried on the live one
        gone = {"url": f"http://127.0.0.1:{free_port()}", "replica_id": dead, "status": "ready"}
        plane.call("POST", "/endpoints", 201, json=gone)
        expected = module(torch.from_numpy(X)).detach().numpy()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{plane.port}/serve/{name}")
        assert client.is_server_ready()
        assert client.get_model_metadata(name)["name"] == name
        for binary in (True, False, True, False, True, False):
            given = triton.InferInput("x", list(X.shape), "FP32")
            given.set_data_from_numpy(X, binary_data=binary)
            wanted = [triton.InferRequestedOutput("y", binary_data=binary)]
            result = client.infer(name, [given], outputs=wanted)
            np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5, atol=1e-6)
        client.close()
        endpoints = plane.call("GET", f"/deployments/{name}/endpoints")["items"]
        assert sorted(e["status"] for e in endpoints) == ["ready", "ready"]
    finally:
        assert serving.stop() == 0
    # drained and deregistered; the dead one deregisters too: nothing ready is left
    [left] = plane.call("GET", f"/deployments/{name}/endpoints")["items"]
    plane.call("DELETE", f"/endpoints/{left['id']}", 204)
    answer = wait_for(
        "no ready endpoint",
        lambda: (r := httpx.get(f"{stable}/v2/models/{name}")).status_code == 503 and r,
    )
    assert answer.headers["retry-after"] == "1" and "no ready endpoint" in answer.json()["error"]


def test_stable_url_streams_large_bodies_both_ways(plane: Plane, tmp_path: Path) -> None:
    """Bodies past ``STREAM_AFTER`` go through as streams, and a call whose endpoint cannot
    be reached before its first byte went out is still retried on another."""
    from gateway.stable_url import STREAM_AFTER

    model, name = f"m-{uuid.uuid4().hex[:8]}", "big-bodies"
    path, module = publish_mlp(plane, tmp_path, model)
    body = {"name": name, "model": model, "version": 1, "replicas": 2}
    plane.call("POST", "/deployments", 201, json=body)
    worker = plane.call("POST", "/workers", 201, json={"name": "t", "cpu_slots": 2})["id"]
    beat = plane.call("POST", f"/workers/{worker}/heartbeat", json={"replicas": []})
    live, dead = (a["replica_id"] for a in beat["assignments"])
    serving = ServerProcess(
        [
            *("--name", name, "--format", "torchscript", "--path", str(path)),
            *("--signature", orjson.dumps(SIGNATURE).decode(), "--heartbeat-s", "0.5"),
            *("--register-url", f"{plane.url}/api/v1", "--replica-id", live),
            *("--max-batch-size", "1"),
        ],
        tmp_path,
        "serving",
    )
    stable = f"{plane.url}/serve/{name}"
    try:
        serving.wait_ready()
        wait_for(
            "endpoint ready", lambda: httpx.get(f"{stable}/v2/health/ready").status_code == 200
        )
        gone = {"url": f"http://127.0.0.1:{free_port()}", "replica_id": dead, "status": "ready"}
        plane.call("POST", "/endpoints", 201, json=gone)
        rows = 3 * STREAM_AFTER // 16  # 3 MiB in (4 floats a row), 1.5 MiB out
        x = np.random.default_rng(0).standard_normal((rows, 4), dtype=np.float32)
        expected = module(torch.from_numpy(x)).detach().numpy()
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [rows, 4],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        )
        payload = header + x.tobytes()

        def pieces() -> Iterator[bytes]:  # a chunked upload: the body arrives in parts
            for at in range(0, len(payload), 256 * 1024):
                yield payload[at : at + 256 * 1024]

        with httpx.Client(timeout=60) as http:
            for _ in range(4):  # round robin: some calls meet the dead endpoint first
                answer = http.post(
                    f"{stable}/v2/models/{name}/infer",
                    content=pieces(),
                    headers={"Inference-Header-Content-Length": str(len(header))},
                )
                assert answer.status_code == 200, answer.text[:300]
                size = int(answer.headers["inference-header-content-length"])
                assert int(answer.headers["content-length"]) == len(answer.content)
                y = np.frombuffer(answer.content[size:], dtype=np.float32).reshape(rows, 2)
                np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
            small = http.post(  # held whole, as before
                f"{stable}/v2/models/{name}/infer",
                json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                  "data": [1, 2, 3, 4]}]},
            )  # fmt: skip
            assert small.status_code == 200, small.text
    finally:
        assert serving.stop() == 0
