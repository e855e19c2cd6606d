"""TorchScript without a signature (its graph keeps no shapes): metadata still names the
outputs, learned from the version's example input at warm-up or else from the first call, and
a call the model refuses is a one-line 400 naming the input, never a traceback."""

from __future__ import annotations

import http.client
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as httpclient
from torch import nn

from contract.examples import encode_example
from tests.serving.conftest import ServerProcess

ROW = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(ROW, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path_factory.mktemp("unsigned") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), path)
    return path, module


@pytest.fixture(scope="module")
def unsigned(model: tuple[Path, nn.Module], log_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    """`bare`: no signature, no example; `example`: what the registry hands over for a version
    pushed with `--example x.npy` and no signature (the example inside `--signature`)."""
    path = model[0]
    example = {"example": encode_example(np.ones((2, ROW), np.float32))}
    base = ["--name", "mlp", "--format", "torchscript", "--path", str(path)]
    started = {
        "bare": ServerProcess(base, log_dir, "unsigned-bare"),
        "example": ServerProcess(
            [*base, "--signature", orjson.dumps(example).decode()], log_dir, "unsigned-example"
        ),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def metadata(server: ServerProcess) -> dict[str, Any]:
    status, body = request(server, "GET", "/v2/models/mlp")
    assert status == 200, body
    return body


def infer(server: ServerProcess, x: np.ndarray) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }
    return request(server, "POST", "/v2/models/mlp/infer", orjson.dumps(body))


def request(
    server: ServerProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body)
        answer = connection.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        connection.close()


def test_the_example_shows_inputs_and_outputs_before_any_call(
    unsigned: dict[str, ServerProcess],
) -> None:
    meta = metadata(unsigned["example"])
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, ROW]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}]


def test_without_an_example_the_outputs_show_from_the_first_call_on(
    unsigned: dict[str, ServerProcess], model: tuple[Path, nn.Module]
) -> None:
    server = unsigned["bare"]
    assert metadata(server)["outputs"] == []
    x = np.ones((2, ROW), np.float32)
    status, answer = infer(server, x)
    assert status == 200, answer
    with torch.inference_mode():
        want = model[1](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"]).reshape(2, 3), want, 1e-5)
    assert metadata(server)["outputs"] == [
        {"name": "output0", "datatype": "FP32", "shape": [-1, 3]}
    ]


@pytest.mark.parametrize("key", ["bare", "example"])
def test_a_wrong_shape_is_a_one_line_400_naming_the_input(
    unsigned: dict[str, ServerProcess], key: str
) -> None:
    status, answer = infer(unsigned[key], np.ones((1, ROW + 1), np.float32))
    assert status == 400, answer
    message = answer["error"]
    assert "\n" not in message and "Traceback" not in message, message
    assert "input 'input'" in message and "FP32 [1, 5]" in message, message
    assert "mat1 and mat2 shapes cannot be multiplied" in message, message
    if key == "example":  # what the model ran on is known: said
        assert f"ran on FP32 [-1, {ROW}]" in message, message


def test_stock_tritonclient_reads_the_learned_metadata_then_infers(
    unsigned: dict[str, ServerProcess], model: tuple[Path, nn.Module]
) -> None:
    client = httpclient.InferenceServerClient(unsigned["example"].url.removeprefix("http://"))
    meta = client.get_model_metadata("mlp")
    [spec], [out] = meta["inputs"], meta["outputs"]
    x = np.random.default_rng(0).standard_normal((3, ROW)).astype(np.float32)
    tensor = httpclient.InferInput(spec["name"], list(x.shape), spec["datatype"])
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp", [tensor], outputs=[httpclient.InferRequestedOutput(out["name"])])
    with torch.inference_mode():
        want = model[1](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy(out["name"]), want, rtol=1e-5, atol=1e-6)
