"""Fuzzing the v2 infer endpoint: whatever arrives, the answer is a 200 or a 4xx `{"error"}`,
never a 5xx, and the process keeps serving. Malformed and truncated JSON, random bytes,
binary tensors with lying sizes and `Inference-Header-Content-Length` values, huge and
negative shapes, datatypes that do not match the model or do not exist."""

from __future__ import annotations

import http.client
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.conftest import ServerProcess

INFER = "/v2/models/mlp/infer"
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same calls every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)

DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16"]
datatype = st.sampled_from(DATATYPES) | st.sampled_from(["FP8", "", "fp32", "STRING"])
dim = st.integers(-3, 70) | st.sampled_from([0, 1 << 20, 1 << 31, 1 << 62, 1 << 64, 10**30])
shape = st.lists(dim, max_size=5) | st.sampled_from(["oops", None, 3, {"a": 1}])
scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.text(max_size=6)
)
data = st.lists(scalar | st.lists(scalar, max_size=4), max_size=130) | scalar
parameters = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "binary_data_output", "classification"]),
    st.integers(-5, 1 << 40) | st.booleans() | st.text(max_size=3),
    max_size=3,
)
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", ""]) | st.text(max_size=4), "datatype": datatype},
    optional={"shape": shape, "data": data, "parameters": parameters},
)
request = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | scalar},
    optional={
        "id": st.text(max_size=8) | st.integers(),
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=8)}, optional={"parameters": parameters}
            ),
            max_size=3,
        ),
        "parameters": parameters,
    },
)


def _json(value: Any) -> bytes:
    """Any JSON (Python's encoder: integers past 64 bits and NaN as the wire may carry)."""
    return json.dumps(value).encode()


def post(server: ServerProcess, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", INFER, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def assert_handled(status: int, body: bytes) -> None:
    assert status == 200 or 400 <= status < 500, (status, body[:300])
    if status != 200:
        answer = orjson.loads(body)
        assert list(answer) == ["error"] and answer["error"], answer


@SETTINGS
@given(call=request, cut=st.none() | st.integers(0, 400))
def test_json_calls_are_answered_or_refused_cleanly(
    servers: dict[str, ServerProcess], call: dict[str, Any], cut: int | None
) -> None:
    body = _json(call)
    if cut is not None:
        body = body[:cut]  # truncated JSON
    assert_handled(*post(servers["mlp_pt2"], body, {"Content-Type": "application/json"}))


@SETTINGS
@given(
    call=request,
    raw=st.binary(max_size=600),
    length=st.none() | st.integers(-10, 2000) | st.sampled_from(["", "abc", "1e3", " 12", "-0"]),
)
def test_binary_calls_with_lying_sizes_are_refused_cleanly(
    servers: dict[str, ServerProcess], call: dict[str, Any], raw: bytes, length: Any
) -> None:
    header = _json(call)
    body = header + raw
    headers = {"Content-Type": "application/octet-stream"}
    headers["Inference-Header-Content-Length"] = str(len(header) if length is None else length)
    assert_handled(*post(servers["mlp_pt2"], body, headers))


@SETTINGS
@given(body=st.binary(max_size=2000), encoding=st.sampled_from([None, "gzip", "deflate", "br"]))
def test_random_bytes_are_refused_cleanly(
    servers: dict[str, ServerProcess], body: bytes, encoding: str | None
) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    assert_handled(*post(servers["mlp_pt2"], body, headers))


def test_the_process_still_serves_after_the_fuzzing(servers: dict[str, ServerProcess]) -> None:
    server = servers["mlp_pt2"]
    assert server.process.poll() is None, server.log
    call = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    status, body = post(server, orjson.dumps(call), {})
    assert status == 200, body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/mlp/load"),
        ("POST", "/v2/repository/models/mlp/unload"),
        ("PUT", "/v2/models/mlp"),
        ("DELETE", "/v2/models/mlp"),
        ("POST", "/v2/models/mlp/versions/1/load"),
        ("GET", "/docs"),
        ("POST", "/shutdown"),
    ],
)
def test_serving_accepts_inference_only(
    servers: dict[str, ServerProcess], method: str, path: str
) -> None:
    """No management routes: model repository, load/unload, docs, shutdown do not exist."""
    connection = http.client.HTTPConnection("127.0.0.1", servers["mlp_pt2"].port, timeout=10)
    try:
        connection.request(method, path, body=b"{}")
        answer = connection.getresponse()
        status, body = answer.status, answer.read()
    finally:
        connection.close()
    assert status in (404, 405), (status, body)
    assert list(orjson.loads(body)) == ["error"]
