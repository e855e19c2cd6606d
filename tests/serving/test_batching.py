"""Concurrent calls batched together answer exactly what each would alone."""

from __future__ import annotations

import http.client
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
import torch

from tests.serving.conftest import ServerProcess
from tests.serving.models import Artifact


def infer_binary(
    port: int, x: np.ndarray, output: str, model: str = "mlp", name: str = "x"
) -> np.ndarray:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            f"/v2/models/{model}/infer",
            body=header + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        answer = connection.getresponse()
        body = answer.read()
        assert answer.status == 200, body
        length = int(answer.getheader("Inference-Header-Content-Length"))
    finally:
        connection.close()
    meta = orjson.loads(body[:length])["outputs"][0]
    return np.frombuffer(body[length:], dtype=np.float32).reshape(meta["shape"])


def metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


BATCHED = {  # server, model, input, output, one row's shape
    "thread": ("mlp_ts", "mlp", "x", "y", (64,)),  # --executor thread --max-delay-ms 2
    "loop": ("cnn", "cnn", "image", "output0", (1, 8, 8)),  # auto → inline; every call waits 5 ms
}


@pytest.mark.parametrize("executor", list(BATCHED))
def test_concurrent_calls_equal_unbatched_outputs(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact], executor: str
) -> None:
    key, model, name, output, row = BATCHED[executor]
    server = servers[key]
    rng = np.random.default_rng(3)
    calls = [rng.standard_normal((1 + i % 3, *row), dtype=np.float32) for i in range(96)]
    runs_before = metric(server, "modelplane_inference_batch_size_count")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda x: infer_binary(server.port, x, output, model, name), calls))
    module = artifacts[key].module
    for x, answer in zip(calls, answers, strict=True):
        with torch.inference_mode():
            alone = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(answer, alone, rtol=1e-5, atol=1e-5)
    runs = metric(server, "modelplane_inference_batch_size_count") - runs_before
    assert runs < len(calls), "no call was batched with another"


def test_batching_off_runs_each_call_alone(servers: dict[str, ServerProcess]) -> None:
    server = servers["mlp_pt2"]  # --max-batch-size 1
    x = np.ones((2, 64), np.float32)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: infer_binary(server.port, x, "output0"), range(16)))
    count = metric(server, "modelplane_inference_batch_size_count")
    assert metric(server, "modelplane_inference_batch_size_sum") == count


def test_safetensors_weights_replace_the_graph_weights(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    x = np.random.default_rng(4).standard_normal((2, 64), dtype=np.float32)
    answer = infer_binary(servers["weights"].port, x, "output0", "weights")
    with torch.inference_mode():
        want = artifacts["weights"].module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-6)
