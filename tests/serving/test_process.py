"""The process around the model: drain, overload, refusals, metrics, keep-alive, CLI."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from contract.serving import ServingSpec
from tests.serving.conftest import REPO, ServerProcess, StartServer
from tests.serving.models import Artifact

SLOW_CALL = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
)


def call(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def run_to_exit(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args, "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigterm_drains_in_flight_calls_and_exits_0(
    artifacts: dict[str, Artifact], start_server: StartServer
) -> None:
    slow = artifacts["slow"]  # each run sleeps 1 s
    server = start_server(slow.args() + ["--allow-pickle", "--max-batch-size", "1"], "drain")
    server.wait_ready()
    with ThreadPoolExecutor(3) as pool:
        pending = [
            pool.submit(call, server.port, "/v2/models/slow/infer", SLOW_CALL) for _ in range(3)
        ]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        answers = [f.result(timeout=30) for f in pending]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert server.process.wait(20) == 0
    assert time.monotonic() - stopped_at < 15
    with pytest.raises(OSError):
        call(server.port, "/v2/models/slow/infer", SLOW_CALL)


def test_full_queue_answers_503_with_retry_after(
    artifacts: dict[str, Artifact], start_server: StartServer
) -> None:
    slow = artifacts["slow"]
    args = slow.args() + ["--allow-pickle", "--max-batch-size", "1", "--max-queue", "2"]
    server = start_server(args, "overload").wait_ready()
    with ThreadPoolExecutor(5) as pool:
        answers = list(
            pool.map(lambda _: call(server.port, "/v2/models/slow/infer", SLOW_CALL), range(5))
        )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 2 and 503 in statuses
    for status, headers, body in answers:
        if status == 503:
            assert headers["retry-after"] == "1"
            assert "server busy" in orjson.loads(body)["error"]
        else:
            assert orjson.loads(body)["outputs"][0]["data"] == [2.0, 4.0]


def test_sha256_mismatch_refuses_to_start(artifacts: dict[str, Artifact]) -> None:
    mlp = artifacts["mlp_pt2"]
    wrong = "0" * 64
    args = ["--name", "mlp", "--format", "torch_export", "--path", str(mlp.path), "--sha256", wrong]
    done = run_to_exit(args)
    assert done.returncode == 1
    assert f"expected {wrong}, got {mlp.sha256[0]}" in done.stderr


def test_pickled_module_is_refused_without_allow_pickle(artifacts: dict[str, Artifact]) -> None:
    done = run_to_exit(artifacts["slow"].args())
    assert done.returncode == 1
    assert "runs code when loaded" in done.stderr


def test_second_keep_alive_call_is_not_delayed_by_nagle(servers: dict[str, ServerProcess]) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    )
    connection = http.client.HTTPConnection("127.0.0.1", servers["mlp_pt2"].port, timeout=10)
    timings = []
    for _ in range(12):
        started = time.perf_counter()
        connection.request("POST", "/v2/models/mlp/infer", body=body)
        answer = connection.getresponse()
        answer.read()
        timings.append(time.perf_counter() - started)
        assert answer.status == 200
    connection.close()
    later = sorted(timings[1:])
    assert later[len(later) // 2] < 0.015, timings  # Nagle + delayed ACK would be ~40 ms


def test_metrics_cover_requests_batches_queue_and_load(servers: dict[str, ServerProcess]) -> None:
    server = servers["cnn"]
    call(server.port, "/v2/models/cnn/infer", b"{")
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for name in (
        'modelplane_inference_requests_total{model="cnn",outcome="bad_request",version="1"}',
        "modelplane_inference_request_seconds_bucket",
        "modelplane_inference_batch_size_bucket",
        "modelplane_inference_queue_depth",
        "modelplane_model_load_seconds",
    ):
        assert name in text


def test_workers_share_one_port_and_stop_cleanly(
    artifacts: dict[str, Artifact], start_server: StartServer
) -> None:
    server = start_server(artifacts["mlp_pt2"].args() + ["--workers", "2"], "workers")
    server.wait_ready()
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    )
    time.sleep(1.0)  # the second worker may still be loading; the first answers meanwhile
    statuses = [call(server.port, "/v2/models/mlp/infer", body)[0] for _ in range(20)]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert server.stop() == 0


def test_help_documents_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for name in ServingSpec.model_fields:  # all but the API key, which is environment only
        assert "--" + name.replace("_", "-") in done.stdout
