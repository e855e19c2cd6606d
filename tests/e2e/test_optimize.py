"""Deploy-time optimisation end to end: real control plane, workers and serving processes.

int8_dynamic on an MLP, a small transformer encoder (TorchScript) and an ONNX MLP: each
deploys, answers within the error its revision records, and the revision and endpoints show
the figures; a model whose quantized outputs are far off is refused by a tight limit while
the old revision keeps serving; fp16 on a CPU deployment is a 422 saying why; the optimised
artifact is made once per worker (a second replica on it reuses the cache)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from torch import nn

from bench.harness import auth, push_version, wait_for
from contract.examples import encode_example
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.deploy_helpers import api, deployment, ready_endpoints

pytestmark = pytest.mark.timeout(240)
NAMES = ("qmlp", "qenc", "qonnx", "qhuge")


@pytest.fixture(scope="module")
def plane(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform of this module's own (the package's workers hold other modules'
    deployments): two workers with two CPU slots each."""
    with running_platform(seaweed, tmp_path_factory, {"w3": 2, "full": 2}) as platform:
        yield platform


@pytest.fixture(autouse=True)
def _free_slots(plane: Platform) -> Iterator[None]:
    """Each test's deployment goes afterwards: the module's workers have 4 CPU slots."""
    yield
    for name in NAMES:
        api(plane, "DELETE", f"/deployments/{name}")

    def gone() -> bool:
        return all(api(plane, "GET", f"/deployments/{n}").status_code == 404 for n in NAMES)

    wait_for("optimize deployments deleted", gone, 60, plane.logs)


warnings.filterwarnings("ignore")


def _mlp(scale: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 10))  # fmt: skip
    with torch.no_grad():
        for p in mlp.parameters():
            p.mul_(scale)
    return mlp.eval()


def _script(module: nn.Module, trace: torch.Tensor | None = None) -> bytes:
    buffer = io.BytesIO()
    scripted = (
        torch.jit.script(module)
        if trace is None
        else torch.jit.trace(module, trace, check_trace=False)
    )
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def _signature(shape: list[int], out: list[int], example: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "signature": {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": shape}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": out}],
        },
        "metadata": {"example": encode_example(example)},
    }


def _infer(plane: Platform, name: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    answer = httpx.post(
        f"{plane.cp.url}/serve/{name}/v2/models/{name}/infer",
        json=body, timeout=30, headers=auth(plane.token),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _available(plane: Platform, name: str, revision: int, timeout: float = 120) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        body = deployment(plane, name)
        ready = [r for r in body["observed"]["replicas"] if r["revision"] == revision]
        done = body["status"] == "available" and all(r["state"] == "ready" for r in ready)
        return body if done and ready_endpoints(plane, name) else None

    return wait_for(f"{name} available at revision {revision}", settled, timeout, plane.logs)


def _revision(plane: Platform, name: str, number: int) -> dict[str, Any]:
    items = api(plane, "GET", f"/deployments/{name}/revisions").json()["items"]
    [found] = [r for r in items if r["revision"] == number]
    return found  # type: ignore[no-any-return]


def _deploy(plane: Platform, name: str, replicas: int = 1, **optimize: Any) -> None:
    body = {"name": name, "model": name, "version": 1, "replicas": replicas, "device": "cpu",
            "optimize": {"mode": "int8_dynamic", **optimize}}  # fmt: skip
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text


def _check_figures(plane: Platform, name: str, original: nn.Module, x: np.ndarray) -> None:
    figures = _revision(plane, name, 1)["optimization"]
    assert figures is not None, _revision(plane, name, 1)
    assert figures["applied"] == "int8_dynamic" and figures["passed"] is True
    assert figures["size_bytes_after"] < figures["size_bytes_before"]
    assert figures["latency_ms_before"] > 0 and figures["latency_ms_after"] > 0
    got = _infer(plane, name, x)
    with torch.inference_mode():
        want = original(torch.from_numpy(x)).numpy()
    assert float(np.max(np.abs(got - want))) <= figures["max_abs_error"] * 1.0001 + 1e-6


def test_int8_dynamic_mlp_answers_within_recorded_error_and_cache_is_per_worker(
    plane: Platform,
) -> None:
    mlp, x = _mlp(), np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    extra = _signature([-1, 64], [-1, 10], x)
    push_version(plane.cp.url, "qmlp", {"model.pt": _script(mlp)}, "torchscript", plane.token,
                 **extra)  # fmt: skip
    _deploy(plane, "qmlp", replicas=3, max_abs_error=0.1, min_top1_agreement=0.99)
    _available(plane, "qmlp", 1)
    _check_figures(plane, "qmlp", mlp, x)
    figures = _revision(plane, "qmlp", 1)["optimization"]
    assert figures["top1_agreement"] >= 0.99 and figures["examples"] == 1

    # quantizations made == workers used: a second replica on a worker reused its artifact
    endpoints = api(plane, "GET", "/deployments/qmlp/endpoints").json()["items"]
    assert len(endpoints) == 3 and all(e["optimization"] for e in endpoints)
    made = sum(not e["optimization"]["cache_hit"] for e in endpoints)
    assert made == len({e["worker"] for e in endpoints}) < 3
    logs = "".join(w.log_path.read_text(errors="replace") for w in plane.workers.values())
    assert "fp16" not in logs  # nothing else was tried

    refused = api(plane, "PATCH", "/deployments/qmlp", json={"optimize": "fp16"})
    assert refused.status_code == 422 and "fp16 needs a CUDA device" in refused.json()["detail"]


def test_int8_dynamic_transformer_encoder(plane: Platform) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = np.random.default_rng(1).standard_normal((1, 16, 64)).astype(np.float32)
    extra = _signature([-1, 16, 64], [-1, 16, 64], x)
    files = {"model.pt": _script(encoder, trace=torch.from_numpy(x))}
    push_version(plane.cp.url, "qenc", files, "torchscript", plane.token, **extra)
    _deploy(plane, "qenc", max_rel_error=0.1)
    _available(plane, "qenc", 1)
    _check_figures(plane, "qenc", encoder, x)


def test_onnx_int8_dynamic_answers_through_tritonclient(plane: Platform, tmp_path: Path) -> None:
    mlp, x = _mlp(), np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(mlp, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})  # fmt: skip
    extra = {"metadata": {"example": encode_example(x)}}
    push_version(plane.cp.url, "qonnx", {"model.onnx": path.read_bytes()}, "onnx", plane.token,
                 **extra)  # fmt: skip
    _deploy(plane, "qonnx", max_abs_error=0.1)
    _available(plane, "qonnx", 1)
    figures = _revision(plane, "qonnx", 1)["optimization"]
    assert figures["applied"] == "int8_dynamic" and figures["runtime_version"].startswith("onnx")
    assert figures["size_bytes_after"] < figures["size_bytes_before"]
    client = triton.InferenceServerClient(plane.cp.url.removeprefix("http://") + "/serve/qonnx")
    try:
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=True)
        got = client.infer("qonnx", [given], headers=auth(plane.token)).as_numpy("y")
    finally:
        client.close()
    with torch.inference_mode():
        want = mlp(torch.from_numpy(x)).numpy()
    assert float(np.max(np.abs(got - want))) <= figures["max_abs_error"] * 1.0001 + 1e-6


def test_badly_quantized_model_is_refused_and_the_old_revision_keeps_serving(
    plane: Platform,
) -> None:
    x = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    x[0, 0] = 1e4  # one huge activation: the dynamic per-tensor scale crushes the rest
    extra = _signature([-1, 64], [-1, 10], x)
    plain, huge = _mlp(), _mlp(scale=30.0)
    push_version(plane.cp.url, "qhuge", {"model.pt": _script(plain)}, "torchscript", plane.token,
                 **extra)  # fmt: skip
    push_version(plane.cp.url, "qhuge", {"model.pt": _script(huge)}, "torchscript", plane.token,
                 **extra)  # fmt: skip
    body = {"name": "qhuge", "model": "qhuge", "version": 1, "device": "cpu"}
    assert api(plane, "POST", "/deployments", json=body).status_code == 201
    _available(plane, "qhuge", 1)
    before = _infer(plane, "qhuge", x[1:2])

    tight = {"version": 2, "optimize": {"mode": "int8_dynamic", "max_abs_error": 1e-3}}
    assert api(plane, "PATCH", "/deployments/qhuge", json=tight).status_code == 200

    def failed() -> dict[str, Any] | None:
        body = deployment(plane, "qhuge")
        return body if body["status"] == "failed" else None

    body = wait_for("qhuge failed", failed, 120, plane.logs)
    assert body["status_reason"].startswith("revision 2 replica 0 failed")
    assert "failed its accuracy check" in body["status_reason"], body  # the numbers, not a log
    figures = _revision(plane, "qhuge", 2)["optimization"]
    assert figures["passed"] is False and figures["max_abs_error"] > 1e-3
    assert "failed its accuracy check" in figures["reason"] and "> 0.001" in figures["reason"]
    np.testing.assert_array_equal(_infer(plane, "qhuge", x[1:2]), before)  # v1 still serves
