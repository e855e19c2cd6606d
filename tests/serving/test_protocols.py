"""TF Serving's REST API (v1) and TorchServe's inference API on plain tensor models, beside
v2: the same runtime call answers them, with each protocol's request and answer shapes, and
each protocol's errors (400 naming the input and what the model expects, never a traceback).
Expected answers are the module's own in-process output (float32; tolerance rtol 1e-5,
atol 1e-6: JSON carries float32 values exactly, batching may reorder nothing else)."""

from __future__ import annotations

import base64
import http.client
import time
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from tests.serving.conftest import START_TIMEOUT_S, ServerProcess, StartServer
from tests.serving.models import Artifact

X = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
A = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
B = np.arange(8, dtype=np.int64).reshape(2, 4) - 3


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        connection.close()


def post_json(server: ServerProcess, path: str, doc: Any) -> tuple[int, Any]:
    return call(server, "POST", path, orjson.dumps(doc), {"Content-Type": "application/json"})


def mlp(artifacts: dict[str, Artifact], x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with torch.inference_mode():
        out: np.ndarray[Any, Any] = artifacts["mlp_ts"].module(torch.from_numpy(x)).numpy()
    return out


def close(got: Any, expected: np.ndarray[Any, Any]) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=1e-5, atol=1e-6)


# -- TF Serving / KServe v1 -----------------------------------------------------------------


def test_v1_model_status_is_tf_servings(servers: dict[str, ServerProcess]) -> None:
    mlp_server = servers["mlp_ts"]
    for path in ("/v1/models/mlp", "/v1/models/mlp/versions/1"):
        status, body = call(mlp_server, "GET", path)
        assert status == 200
        ok = {"error_code": "OK", "error_message": ""}
        assert body == {
            "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]
        }
    assert call(mlp_server, "GET", "/v1/models/mlp/versions/2") == (
        404,
        {"error": "model 'mlp' has no version '2'"},
    )
    status, body = call(mlp_server, "GET", "/v1/models/nope")
    assert status == 404 and "nope" in body["error"]


def test_v1_metadata_shows_the_serving_default_signature(
    servers: dict[str, ServerProcess],
) -> None:
    status, body = call(servers["two"], "GET", "/v1/models/two/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "two", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["b"]["dtype"] == "DT_INT64"
    dims = signature["inputs"]["a"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "4"]
    assert set(signature["outputs"]) == {"sum", "double"}


def test_v1_row_format_predicts_one_row_per_instance(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    status, body = post_json(servers["mlp_ts"], "/v1/models/mlp:predict", {"instances": X.tolist()})
    assert status == 200, body
    close(body["predictions"], mlp(artifacts, X))
    status, body = post_json(  # objects keyed by input name work for one input too
        servers["mlp_ts"],
        "/v1/models/mlp/versions/1:predict",
        {"instances": [{"x": X[0].tolist()}]},
    )
    assert status == 200, body
    close(body["predictions"], mlp(artifacts, X[:1]))


def test_v1_columnar_format_answers_outputs(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    doc = {"signature_name": "serving_default", "inputs": X.tolist()}
    status, body = post_json(servers["mlp_ts"], "/v1/models/mlp:predict", doc)
    assert status == 200, body
    close(body["outputs"], mlp(artifacts, X))


def test_v1_several_inputs_and_outputs_in_both_formats(servers: dict[str, ServerProcess]) -> None:
    rows = [{"a": a.tolist(), "b": b.tolist()} for a, b in zip(A, B, strict=True)]
    status, body = post_json(servers["two"], "/v1/models/two:predict", {"instances": rows})
    assert status == 200, body
    assert [sorted(p) for p in body["predictions"]] == [["double", "sum"]] * 2
    close([p["sum"] for p in body["predictions"]], A + B)
    assert [p["double"] for p in body["predictions"]] == (B * 2).tolist()
    doc = {"inputs": {"a": A.tolist(), "b": B.tolist()}}
    status, body = post_json(servers["two"], "/v1/models/two:predict", doc)
    assert status == 200, body
    close(body["outputs"]["sum"], A + B)
    assert body["outputs"]["double"] == (B * 2).tolist()


def test_v1_binary_values_travel_as_b64(servers: dict[str, ServerProcess]) -> None:
    text = "hello world"  # TorchScript's len() and upper() work on bytes: ASCII
    doc = {"instances": [{"b64": base64.b64encode(text.encode()).decode()}, "plain"]}
    status, body = post_json(servers["text"], "/v1/models/text:predict", doc)
    assert status == 200, body
    assert body["predictions"] == [
        {"lengths": len(text), "upper": text.upper()},
        {"lengths": 5, "upper": "PLAIN"},
    ]


def test_v1_accepts_tf_servings_nan_and_infinity(servers: dict[str, ServerProcess]) -> None:
    row = "[" + ", ".join(["NaN", "Infinity", "-Infinity"] + ["0.5"] * 61) + "]"
    body = b'{"instances": [' + row.encode() + b"]}"
    status, answer = call(servers["mlp_ts"], "POST", "/v1/models/mlp:predict", body)
    assert status == 200, answer
    assert len(answer["predictions"][0]) == 10


V1_ERRORS: dict[str, tuple[str, bytes, int, str]] = {
    "both_formats": (":predict", b'{"instances": [[1]], "inputs": [[1]]}', 400, "not both"),
    "neither_format": (":predict", b'{"examples": []}', 400, "needs 'instances'"),
    "malformed_json": (":predict", b'{"instances": [', 400, "malformed JSON"),
    "wrong_shape": (
        ":predict",
        b'{"instances": [[1.0, 2.0, 3.0]]}',
        400,
        "input 'x': shape [1, 3], model expects [-1, 64]",
    ),
    "unknown_input": (":predict", b'{"inputs": {"z": [[1.0]]}}', 400, "unknown input 'z'"),
    "not_numbers": (":predict", b'{"instances": [["a", "b"]]}', 400, "does not fit FP32"),
    "ragged": (":predict", b'{"instances": [[1.0], [1.0, 2.0]]}', 400, "input 'x'"),
    "other_signature": (
        ":predict",
        b'{"signature_name": "classify", "instances": [[1.0]]}',
        400,
        "signature_name 'classify' not found",
    ),
    "classify_verb": (":classify", b'{"examples": []}', 404, "answers :predict"),
}


@pytest.mark.parametrize("case", sorted(V1_ERRORS))
def test_v1_bad_calls_answer_tf_servings_error_shape(
    servers: dict[str, ServerProcess], case: str
) -> None:
    verb, body, status, message = V1_ERRORS[case]
    got, answer = call(servers["mlp_ts"], "POST", "/v1/models/mlp" + verb, body)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert message in answer["error"] and "Traceback" not in answer["error"]
    assert call(servers["mlp_ts"], "GET", "/v1/models/mlp:predict")[0] == 405


# -- TorchServe -------------------------------------------------------------------------------


def test_torchserve_ping_is_healthy_when_ready(servers: dict[str, ServerProcess]) -> None:
    assert call(servers["mlp_ts"], "GET", "/ping") == (200, {"status": "Healthy"})


def test_torchserve_json_item_is_answered_without_a_batch_axis(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    status, body = post_json(servers["mlp_ts"], "/predictions/mlp", X[0].tolist())
    assert status == 200, body
    close(body, mlp(artifacts, X[:1])[0])
    status, body = post_json(servers["mlp_ts"], "/predictions/mlp/1", X.tolist())  # a batch
    assert status == 200, body
    close(body, mlp(artifacts, X))
    # curl -d sends application/x-www-form-urlencoded: a JSON-looking body is still JSON
    status, body = call(servers["mlp_ts"], "PUT", "/predictions/mlp", orjson.dumps(X[1].tolist()))
    assert status == 200, body
    close(body, mlp(artifacts, X[1:2])[0])


def test_torchserve_json_object_names_several_inputs(servers: dict[str, ServerProcess]) -> None:
    doc = {"a": A[0].tolist(), "b": B[0].tolist()}
    status, body = post_json(servers["two"], "/predictions/two", doc)
    assert status == 200, body
    close(body["sum"], A[0] + B[0])
    assert body["double"] == (B[0] * 2).tolist()


def test_torchserve_raw_body_feeds_the_one_bytes_input(servers: dict[str, ServerProcess]) -> None:
    text = "hello there"
    status, body = call(
        servers["text"], "POST", "/predictions/text", text.encode(), {"Content-Type": "text/plain"}
    )
    assert status == 200, body
    assert body == {"lengths": len(text), "upper": text.upper()}


TORCHSERVE_ERRORS: dict[str, tuple[str, bytes, int, str, str]] = {
    "unknown_model": ("/predictions/nope", b"[1]", 404, "ModelNotFoundException", "nope"),
    "unknown_version": ("/predictions/mlp/7", b"[1]", 404, "ModelNotFoundException", "7"),
    "wrong_shape": (
        "/predictions/mlp",
        b"[1.0, 2.0]",
        400,
        "BadRequestException",
        "input 'x': shape [1, 2], model expects [-1, 64]",
    ),
    "raw_bytes_for_tensors": (
        "/predictions/mlp",
        b"\x89PNG\r\n",
        400,
        "BadRequestException",
        "this model takes JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(TORCHSERVE_ERRORS))
def test_torchserve_bad_calls_answer_torchserves_error_shape(
    servers: dict[str, ServerProcess], case: str
) -> None:
    path, body, status, kind, message = TORCHSERVE_ERRORS[case]
    got, answer = call(servers["mlp_ts"], "POST", path, body)
    assert got == status and answer["code"] == status and answer["type"] == kind, answer
    assert message in answer["message"] and "Traceback" not in answer["message"]


def test_v2_still_answers_beside_the_others(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 64], "data": X.ravel().tolist()}]
    }
    status, body = post_json(servers["mlp_ts"], "/v2/models/mlp/infer", doc)
    assert status == 200, body
    close(np.reshape(body["outputs"][0]["data"], (3, 10)), mlp(artifacts, X))


def test_while_loading_ping_is_503_and_v1_status_says_loading(
    artifacts: dict[str, Artifact], start_server: StartServer
) -> None:
    """The slow model's warm-up calls take seconds: the port answers before the model does."""
    server = start_server(artifacts["slow"].args() + ["--allow-pickle"], "loading")
    seen: set[tuple[int, str]] = set()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and (200, "Healthy") not in seen:
        assert server.process.poll() is None, server.log
        try:
            status, body = call(server, "GET", "/ping")
            seen.add((status, body["status"]))
            if status == 503:
                _, state = call(server, "GET", "/v1/models/slow")
                seen.add((0, state["model_version_status"][0]["state"]))
        except OSError:
            pass  # not listening yet
        time.sleep(0.05)
    assert {(503, "Unhealthy"), (0, "LOADING"), (200, "Healthy")} <= seen, seen
    _, state = call(server, "GET", "/v1/models/slow")
    assert state["model_version_status"][0]["state"] == "AVAILABLE"
