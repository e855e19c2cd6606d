"""The SDK's binary tensor encoding against serving's own protocol parser and encoder."""

from __future__ import annotations

import numpy as np
import pytest

from client.tensors import TensorError, decode_response, encode_request
from serving.protocol import OutputTensor, decode_request, encode_response


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[1, -2], [3, 4]], dtype=np.int64),
        np.array([True, False]),
        np.array([1.5, 2.5], dtype=np.float16),
        np.array([b"hello", b"", b"w\x00rld"], dtype=object),
    ],
)
def test_inputs_arrive_as_sent(array: np.ndarray) -> None:  # type: ignore[type-arg]
    body, header = encode_request({"x": array, "y": np.zeros((0, 2), np.float64)})
    request = decode_request(body, header)
    assert [i.name for i in request.inputs] == ["x", "y"] and request.binary_default
    assert request.inputs[0].data.shape == array.shape
    assert request.inputs[0].data.tolist() == array.tolist()
    assert request.inputs[1].data.shape == (0, 2)


def test_binary_and_json_outputs_decode_to_arrays() -> None:
    y = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    z = np.array([7, 8], dtype=np.int32)
    outputs = [("y", OutputTensor("FP32", y), True), ("z", OutputTensor("INT32", z), False)]
    body, header = encode_response("m", "1", None, outputs)
    decoded = decode_response(body, header)
    np.testing.assert_array_equal(decoded["y"], y)
    assert decoded["z"].dtype == np.int32 and decoded["z"].tolist() == [7, 8]


def test_an_unsupported_dtype_is_refused() -> None:
    with pytest.raises(TensorError, match="complex"):
        encode_request({"x": np.zeros(2, dtype=np.complex64)})
