"""Calls and waits against the deployments API, shared by the end-to-end tests."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import tritonclient.http as triton

from bench.harness import auth, wait_for
from tests.e2e.conftest import Platform

X = [[1.0, 2.0, 3.0, 4.0]]


def api(plane: Platform, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{plane.cp.api}{path}", timeout=10, headers=auth(plane.token), **kwargs
    )


def deployment(plane: Platform, name: str) -> dict[str, Any]:
    answer = api(plane, "GET", f"/deployments/{name}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def ready_endpoints(plane: Platform, name: str, version: int | None = None) -> list[dict[str, Any]]:
    answer = api(plane, "GET", f"/deployments/{name}/endpoints")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return [
        e for e in items if e["status"] == "ready" and (version is None or e["version"] == version)
    ]


def wait_serving(plane: Platform, name: str, version: int, timeout: float = 45) -> dict[str, Any]:
    """Until the deployment is `available` on `version`, with a ready endpoint of it, and
    a call through the stable URL is answered by that version."""

    def settled() -> dict[str, Any] | None:
        body = deployment(plane, name)
        observed = body["observed"]
        live = [r for r in observed["replicas"] if r["desired"] == "run"]
        if (
            body["status"] == "available"
            and all(r["version"] == version and r["state"] == "ready" for r in live)
            and ready_endpoints(plane, name, version)
            and _answers(f"{plane.cp.url}/serve/{name}", name, version, plane.token)
        ):
            return body
        return None

    return wait_for(f"{name} serving v{version}", settled, timeout, plane.logs)


def _answers(url: str, model: str, version: int, token: str | None) -> bool:
    """The test models add their version number: v1 answers x + 1, v2 x + 2."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X[0]}]}
    answer = httpx.post(
        f"{url}/v2/models/{model}/infer", json=body, timeout=10, headers=auth(token)
    )
    return answer.status_code == 200 and answer.json()["outputs"][0]["data"][0] == 1 + version


def infer_json(url: str, model: str, token: str | None) -> list[float]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X[0]}]}
    answer = httpx.post(
        f"{url}/v2/models/{model}/infer", json=body, timeout=10, headers=auth(token)
    )
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def infer_triton(url: str, model: str, token: str | None, *, binary: bool) -> np.ndarray[Any, Any]:
    """`url` as tritonclient takes it: host:port, optionally with a path (`/serve/NAME`)."""
    client = triton.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=10)
    try:
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array(X, dtype=np.float32), binary_data=binary)
        out = triton.InferRequestedOutput("y", binary_data=binary)
        result = client.infer(model, [x], outputs=[out], headers=auth(token))
        return result.as_numpy("y")  # type: ignore[no-any-return]
    finally:
        client.close()


def serving_pid(plane: Platform, endpoint_url: str) -> tuple[str, int]:
    """(worker name, pid) of the serving process behind an endpoint, from the worker logs."""
    port = int(endpoint_url.rsplit(":", 1)[1].split("/")[0])
    for name, worker in plane.workers.items():
        text = worker.log_path.read_text(errors="replace")
        found = re.findall(rf"\(pid (\d+), port {port},", text)
        if found:
            return name, int(found[-1])
    raise AssertionError(f"no worker started a process on port {port}\n{plane.logs()}")


class Caller(threading.Thread):
    """Keeps calling through the stable URL; counts answers by value and every failure."""

    def __init__(self, url: str, model: str, token: str | None) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.token = url, model, token
        self.seen: Counter[float] = Counter()
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X[0]}]}
        with httpx.Client(timeout=10, headers=auth(self.token)) as http:
            while not self._halt.is_set():
                try:
                    answer = http.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
                    if answer.status_code == 200:
                        self.seen[answer.json()["outputs"][0]["data"][0]] += 1
                    else:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)
