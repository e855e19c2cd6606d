"""Every runtime behaves the same from the outside: one suite, parametrised over runtimes (as
`tests/storage/test_contract.py` is over stores). Real `python -m serving` processes; the
models are built in the test (`runtime_cases.py`: add a runtime's case there)."""

from __future__ import annotations

import http.client
import re
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from client.tensors import HEADER, decode_response, encode_request
from serving.artifacts import parse_signature
from serving.runtimes import RuntimeOptions, runtime_for
from serving.runtimes.base import manifest
from tests.serving.conftest import ServerProcess
from tests.serving.runtime_cases import Broken, Case, build_cases

KEYS = [
    "torchscript",
    "torch_export",
    "onnx",
    "onnx_external_data",
    "sklearn_logistic",
    "sklearn_tree_strings",
    "keras",
    "tf_savedmodel",
]
BROKEN = ["torch", "onnx", "keras", "tensorflow"]
SERVING = ["--max-delay-ms", "5", "--executor", "thread"]  # concurrent calls form batches


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Case], dict[str, Broken]]:
    cases, broken = build_cases(tmp_path_factory.mktemp("runtimes"))
    assert sorted(cases) == sorted(KEYS) and sorted(broken) == sorted(BROKEN)
    return cases, broken


@pytest.fixture(scope="module")
def cases(built: tuple[dict[str, Case], dict[str, Broken]]) -> dict[str, Case]:
    return built[0]


@pytest.fixture(scope="module")
def running(
    built: tuple[dict[str, Case], dict[str, Broken]], log_dir: Path
) -> Iterator[dict[str, ServerProcess]]:
    """A server per case and per broken model, started together: loads overlap."""
    cases, broken = built
    started = {key: ServerProcess(c.args() + SERVING, log_dir, key) for key, c in cases.items()}
    started.update(
        (f"broken-{key}", ServerProcess(b.args(), log_dir, f"broken-{key}"))
        for key, b in broken.items()
    )
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def call(
    server: ServerProcess, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
    finally:
        connection.close()


def json_infer(server: ServerProcess, case: Case, x: np.ndarray) -> tuple[int, dict[str, Any]]:
    body = {"inputs": [tensor(case.input, x)]}
    status, raw, _ = call(server, "POST", f"/v2/models/{case.name}/infer", orjson.dumps(body))
    return status, orjson.loads(raw)


def tensor(name: str, x: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}


def binary_infer(server: ServerProcess, case: Case, x: np.ndarray) -> dict[str, np.ndarray]:
    body, length = encode_request({case.input: x})
    status, raw, headers = call(
        server,
        "POST",
        f"/v2/models/{case.name}/infer",
        body,
        **{HEADER: str(length), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, raw
    answered = headers.get(HEADER.lower())
    return decode_response(raw, None if answered is None else int(answered))


def from_json(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    return decode_response(orjson.dumps(answer), None)


def assert_matches(case: Case, got: dict[str, np.ndarray], x: np.ndarray) -> None:
    want = case.reference(x)
    assert set(got) == set(want), f"outputs {sorted(got)}, the framework's {sorted(want)}"
    for name, expected in want.items():
        if expected.dtype.kind in "OSU":
            labels = [v if isinstance(v, bytes) else str(v).encode() for v in got[name].ravel()]
            assert labels == [str(v).encode() for v in expected.ravel()], name
        else:
            assert got[name].shape == expected.shape, name
            np.testing.assert_allclose(got[name], expected, rtol=case.rtol, atol=case.atol)


def error_of(status: int, body: dict[str, Any]) -> str:
    message = body.get("error")
    assert isinstance(message, str), body
    assert "\n" not in message and "Traceback" not in message, message
    assert len(message) < 600, message
    return message


def metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# -- the contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_metadata_names_every_input_and_output_with_datatype_and_shape(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case = cases[key]
    status, raw, _ = call(running[key], "GET", f"/v2/models/{case.name}")
    assert status == 200, raw
    meta = orjson.loads(raw)
    assert meta["platform"] == case.platform
    batch = -1 if case.batchable else case.rows
    assert meta["inputs"] == [
        {"name": case.input, "datatype": case.datatype, "shape": [batch, *case.row]}
    ]
    shown = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shown == {name: (dt, list(shape)) for name, (dt, shape) in case.outputs.items()}


@pytest.mark.parametrize("key", KEYS)
def test_json_infer_answers_what_the_framework_does(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case = cases[key]
    x = case.sample(seed=1)
    status, answer = json_infer(running[key], case, x)
    assert status == 200, answer
    assert {o["name"] for o in answer["outputs"]} == set(case.outputs)
    assert_matches(case, from_json(answer), x)


@pytest.mark.parametrize("key", KEYS)
def test_binary_infer_answers_what_the_framework_does(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case = cases[key]
    x = case.sample(seed=2)
    assert_matches(case, binary_infer(running[key], case, x), x)


@pytest.mark.parametrize("key", KEYS)
def test_concurrent_calls_batch_where_batchable_and_each_gets_its_own_answer(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case, server = cases[key], running[key]
    rows = [1 + i % 3 if case.batchable else case.rows for i in range(48)]
    calls = [case.sample(seed=100 + i, rows=n) for i, n in enumerate(rows)]
    runs_before = metric(server, "modelplane_inference_batch_size_count")
    summed_before = metric(server, "modelplane_inference_batch_size_sum")
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda x: binary_infer(server, case, x), calls))
    for x, answer in zip(calls, answers, strict=True):
        assert_matches(case, answer, x)
    runs = metric(server, "modelplane_inference_batch_size_count") - runs_before
    summed = metric(server, "modelplane_inference_batch_size_sum") - summed_before
    if case.batchable:
        assert runs < len(calls), "no call was batched with another"
    else:
        assert runs == summed == len(calls), "a model of one fixed batch ran calls together"


@pytest.mark.parametrize("key", KEYS)
def test_wrong_datatype_is_400_naming_the_input_and_what_the_model_expects(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case = cases[key]
    x = case.sample().astype(np.int32)
    body = {"inputs": [tensor(case.input, x, "INT32")]}
    status, raw, _ = call(running[key], "POST", f"/v2/models/{case.name}/infer", orjson.dumps(body))
    message = error_of(status, orjson.loads(raw))
    assert status == 400
    assert f"input {case.input!r}" in message and f"model expects {case.datatype}" in message


@pytest.mark.parametrize("key", KEYS)
def test_wrong_shape_is_400_naming_the_input_and_what_the_model_expects(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str
) -> None:
    case = cases[key]
    x = np.zeros((case.rows, case.row[0] + 1), np.float32)
    status, answer = json_infer(running[key], case, x)
    message = error_of(status, answer)
    assert status == 400
    batch = -1 if case.batchable else case.rows
    assert f"input {case.input!r}" in message
    assert f"model expects {[batch, *case.row]}" in message


@pytest.mark.parametrize("key", BROKEN)
def test_an_error_inside_the_model_is_one_line_and_the_server_carries_on(
    running: dict[str, ServerProcess], built: tuple[dict[str, Case], dict[str, Broken]], key: str
) -> None:
    broken, server = built[1][key], running[f"broken-{key}"]
    body = orjson.dumps({"inputs": [tensor(broken.input, broken.call)]})
    status, raw, _ = call(server, "POST", f"/v2/models/{broken.name}/infer", body)
    assert status in (400, 500), raw
    error_of(status, orjson.loads(raw))
    again = orjson.dumps({"inputs": [tensor(broken.input, broken.fine)]})
    status, raw, _ = call(server, "POST", f"/v2/models/{broken.name}/infer", again)
    assert status == 200, raw


@pytest.mark.parametrize("key", KEYS)
def test_the_model_is_warmed_up_before_it_turns_ready(
    running: dict[str, ServerProcess], key: str
) -> None:
    log = running[key].log
    warmed, ready = log.find("warm-up call"), log.find("endpoint ready")
    assert -1 < warmed < ready, log


@pytest.mark.system
@pytest.mark.parametrize("key", KEYS)
def test_a_sha256_mismatch_never_serves(cases: dict[str, Case], log_dir: Path, key: str) -> None:
    case = cases[key]
    wrong = "0" * 64
    files = [p for p, _ in manifest(case.path)] if case.path.is_dir() else []
    sha256 = [f"{p}={wrong}" for p in files] if files else [wrong]
    server = ServerProcess(case.args(sha256=sha256), log_dir, f"sha-{key}")
    try:
        assert server.process.wait(120) == 1
        assert "sha256 mismatch" in server.log
    finally:
        server.stop()


@pytest.mark.parametrize("key", KEYS)
def test_unload_lets_the_model_go(cases: dict[str, Case], key: str) -> None:
    case = cases[key]
    signature = parse_signature(orjson.dumps(case.signature).decode() if case.signature else None)
    runtime = runtime_for(case.format)(case.format, RuntimeOptions(signature=signature))
    runtime.load(case.path)
    x = case.sample(seed=3)
    assert_matches(case, {n: t.data for n, t in runtime.predict({case.input: x}).items()}, x)
    runtime.unload()
    with pytest.raises(Exception):  # noqa: B017 - whatever it raises, it no longer answers
        runtime.predict({case.input: x})


# -- a stock client ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["onnx", "sklearn_tree_strings"])
@pytest.mark.parametrize("binary", [True, False])
def test_stock_tritonclient_reads_metadata_then_infers(
    running: dict[str, ServerProcess], cases: dict[str, Case], key: str, binary: bool
) -> None:
    case = cases[key]
    client = httpclient.InferenceServerClient(running[key].url.removeprefix("http://"))
    meta = client.get_model_metadata(case.name)
    [spec] = meta["inputs"]
    x = case.sample(seed=4)
    tensor = httpclient.InferInput(spec["name"], list(x.shape), spec["datatype"])
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [
        httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]
    ]
    result = client.infer(case.name, [tensor], outputs=wanted)
    assert_matches(case, {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}, x)
