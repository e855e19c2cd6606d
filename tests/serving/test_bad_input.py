"""Every malformed call answers 400/404 `{"error"}` naming the problem; the server lives on."""

from __future__ import annotations

import http.client
from typing import Any

import numpy as np
import orjson
import pytest

from tests.serving.conftest import ServerProcess

INFER = "/v2/models/mlp/infer"


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        connection.close()


def json_call(shape: list[int], data: Any, name: str = "x", datatype: str = "FP32") -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    )


def binary_call(shape: list[int], raw: bytes, size: int | None = None) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    )
    return header + raw, len(header)


ROW = np.ones(64, np.float32).tobytes()

CASES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "malformed_json": (b'{"inputs": [', {}, 400, "malformed JSON"),
    "not_an_object": (b"[1, 2]", {}, 400, "must be a JSON object"),
    "no_inputs": (b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty list"),
    "unknown_input": (json_call([1, 64], [0.0] * 64, name="z"), {}, 400, "unknown input 'z'"),
    "wrong_datatype": (
        json_call([1, 64], [0] * 64, datatype="INT32"),
        {},
        400,
        "datatype INT32, model expects FP32",
    ),
    "unknown_datatype": (json_call([1, 64], [0] * 64, datatype="FP8"), {}, 400, "unknown datatype"),
    "wrong_shape": (
        json_call([1, 32], [0.0] * 32),
        {},
        400,
        "shape [1, 32], model expects [-1, 64]",
    ),
    "data_length": (json_call([1, 64], [0.0] * 3), {}, 400, "data has 3 elements"),
    "data_not_numbers": (json_call([1, 64], ["a"] * 64), {}, 400, "data does not fit FP32"),
    "negative_shape": (json_call([-1, 64], [0.0] * 64), {}, 400, "non-negative integers"),
    "huge_shape_json": (json_call([1 << 40, 64], [0.0]), {}, 400, "more than"),
    "large_shape_json": (json_call([1 << 20, 64], [0.0]), {}, 400, "data has 1 elements"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_json_call_is_400_naming_the_problem(
    servers: dict[str, ServerProcess], case: str
) -> None:
    body, headers, status, message = CASES[case]
    answer_status, answer = post(servers["mlp_pt2"], INFER, body, headers)
    assert answer_status == status
    assert list(answer) == ["error"]
    assert message in answer["error"]


def test_truncated_binary_body_is_400(servers: dict[str, ServerProcess]) -> None:
    body, length = binary_call([1, 64], ROW)
    status, answer = post(
        servers["mlp_pt2"], INFER, body[:-10], {"Inference-Header-Content-Length": str(length)}
    )
    assert status == 400
    assert "binary body truncated" in answer["error"]


def test_binary_size_not_matching_shape_is_400(servers: dict[str, ServerProcess]) -> None:
    body, length = binary_call([2, 64], ROW)
    status, answer = post(
        servers["mlp_pt2"], INFER, body, {"Inference-Header-Content-Length": str(length)}
    )
    assert status == 400
    assert "binary_data_size 256 does not match shape [2, 64]" in answer["error"]


def test_huge_binary_shape_is_refused_before_allocating(servers: dict[str, ServerProcess]) -> None:
    body, length = binary_call([1 << 30, 1 << 30], ROW, size=1 << 62)
    status, answer = post(
        servers["mlp_pt2"], INFER, body, {"Inference-Header-Content-Length": str(length)}
    )
    assert status == 400
    assert "more than" in answer["error"]


@pytest.mark.parametrize(
    ("header", "message"),
    [("99999", "exceeds the body"), ("12", "malformed JSON"), ("abc", "is not a number")],
)
def test_wrong_header_length_is_400(
    servers: dict[str, ServerProcess], header: str, message: str
) -> None:
    body, _ = binary_call([1, 64], ROW)
    status, answer = post(
        servers["mlp_pt2"], INFER, body, {"Inference-Header-Content-Length": header}
    )
    assert status == 400
    assert message in answer["error"]


def test_header_length_short_of_json_leaves_extra_bytes(servers: dict[str, ServerProcess]) -> None:
    body, length = binary_call([1, 64], ROW)
    status, answer = post(
        servers["mlp_pt2"], INFER, b" " + body, {"Inference-Header-Content-Length": str(length)}
    )
    assert status == 400
    assert "malformed JSON" in answer["error"] or "after the last binary input" in answer["error"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/other/infer", "unknown model 'other'"),
        ("/v2/models/mlp/versions/2/infer", "model 'mlp' has no version '2'"),
        ("/v2/models/mlp/versions/2", "model 'mlp' has no version '2'"),
    ],
)
def test_unknown_model_or_version_is_404(
    servers: dict[str, ServerProcess], path: str, message: str
) -> None:
    status, answer = post(servers["mlp_pt2"], path, json_call([1, 64], [0.0] * 64))
    assert (status, answer) == (404, {"error": message}) or (
        status == 404 and message in answer["error"]
    )


def test_unknown_output_is_400(servers: dict[str, ServerProcess]) -> None:
    doc = orjson.loads(json_call([1, 64], [0.0] * 64))
    doc["outputs"] = [{"name": "nope"}]
    status, answer = post(servers["mlp_pt2"], INFER, orjson.dumps(doc))
    assert status == 400
    assert "unknown output 'nope'" in answer["error"]


def test_missing_input_is_400(servers: dict[str, ServerProcess]) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
    )
    status, answer = post(servers["two"], "/v2/models/two/infer", body)
    assert status == 400
    assert "missing inputs ['b']" in answer["error"]


def test_nested_data_unknown_parameters_and_no_content_type_are_fine(
    servers: dict[str, ServerProcess],
) -> None:
    doc = {
        "id": "n1",
        "parameters": {"priority": 3, "whatever": "x"},
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 64],
                "data": [[0.5] * 64, [0.25] * 64],
                "parameters": {"unknown": True},
            }
        ],
    }
    status, answer = post(servers["mlp_pt2"], INFER, orjson.dumps(doc))
    assert status == 200
    assert answer["id"] == "n1"
    assert answer["outputs"][0]["shape"] == [2, 10]
    assert len(answer["outputs"][0]["data"]) == 20


def test_server_keeps_serving_after_bad_calls(servers: dict[str, ServerProcess]) -> None:
    for body, headers, _, _ in CASES.values():
        post(servers["mlp_pt2"], INFER, body, headers)
    status, answer = post(servers["mlp_pt2"], INFER, json_call([1, 64], [0.0] * 64))
    assert status == 200
    assert servers["mlp_pt2"].process.poll() is None
