"""The stock `tritonclient.http` client against our server, unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import ServerProcess
from tests.serving.models import Artifact


def client_for(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def test_health_live_and_ready(servers: dict[str, ServerProcess]) -> None:
    client = client_for(servers["mlp_pt2"])
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("nope")


def test_server_metadata_advertises_binary_tensors(servers: dict[str, ServerProcess]) -> None:
    meta = client_for(servers["mlp_pt2"]).get_server_metadata()
    assert meta["name"] == "modelplane"
    assert meta["extensions"] == ["binary_tensor_data"]


def test_export_metadata_is_inferred(servers: dict[str, ServerProcess]) -> None:
    meta = client_for(servers["mlp_pt2"]).get_model_metadata("mlp", "1")
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch_torch_export"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 10]}]


def test_torchscript_metadata_comes_from_signature(servers: dict[str, ServerProcess]) -> None:
    meta = client_for(servers["mlp_ts"]).get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]


def expected(module: torch.nn.Module, *arrays: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in arrays))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("key", ["mlp_ts", "mlp_pt2"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["", "1"])
def test_infer_mlp(
    servers: dict[str, ServerProcess],
    artifacts: dict[str, Artifact],
    key: str,
    binary: bool,
    version: str,
) -> None:
    x = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = "y" if key == "mlp_ts" else "output0"
    result = client_for(servers[key]).infer(
        "mlp",
        [tensor],
        model_version=version,
        outputs=[httpclient.InferRequestedOutput(output, binary_data=binary)],
        request_id="call-7",
    )
    np.testing.assert_allclose(
        result.as_numpy(output), expected(artifacts[key].module, x)[0], rtol=1e-5, atol=1e-6
    )
    assert result.get_response()["id"] == "call-7"


def test_infer_cnn_without_requested_outputs(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact]
) -> None:
    image = np.random.default_rng(2).standard_normal((2, 1, 8, 8), dtype=np.float32)
    tensor = httpclient.InferInput("image", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(image)
    result = client_for(servers["cnn"]).infer("cnn", [tensor])
    np.testing.assert_allclose(
        result.as_numpy("output0"),
        expected(artifacts["cnn"].module, image)[0],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("binary", [True, False])
def test_two_inputs_two_outputs(servers: dict[str, ServerProcess], binary: bool) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    b = np.arange(8, dtype=np.int64).reshape(2, 4) - 3
    inputs = [
        httpclient.InferInput("a", [2, 4], "FP32"),
        httpclient.InferInput("b", [2, 4], "INT64"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("double", binary_data=binary),
        httpclient.InferRequestedOutput("sum", binary_data=not binary),
    ]
    result = client_for(servers["two"]).infer("two", inputs, outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("double"), b * 2)
    assert result.as_numpy("double").dtype == np.int64


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_round_trip(servers: dict[str, ServerProcess], binary: bool) -> None:
    texts = np.array([b"hello", b"", "caf\u00e9".encode()], dtype=np.object_)
    tensor = httpclient.InferInput("texts", [3], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("lengths", binary_data=binary),
        httpclient.InferRequestedOutput("upper", binary_data=binary),
    ]
    result = client_for(servers["text"]).infer("text", [tensor], outputs=outputs)
    assert result.as_numpy("lengths").tolist() == [5, 0, 5]  # TorchScript counts UTF-8 bytes
    upper = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("upper")]
    assert upper == [b"HELLO", b"", "CAF\u00e9".encode()]  # and upper-cases ASCII only


def test_bool_fp16_bf16_binary_round_trip(servers: dict[str, ServerProcess]) -> None:
    flags = np.array([[True, False, True], [False, False, True]])
    half = np.array([[0.5, -1.25, 3.0], [1e-3, 2.0, -0.0]], dtype=np.float16)
    brain = torch.tensor([[1.5, -2.0, 0.25], [3.0, 0.0, -8.0]], dtype=torch.bfloat16)
    brain_bits = brain.view(torch.int16).numpy().view(np.uint16)
    inputs = [
        httpclient.InferInput("flags", [2, 3], "BOOL"),
        httpclient.InferInput("half", [2, 3], "FP16"),
        httpclient.InferInput("brain", [2, 3], "BF16"),
    ]
    inputs[0].set_data_from_numpy(flags)
    inputs[1].set_data_from_numpy(half)
    inputs[2]._raw_data = brain_bits.tobytes()  # tritonclient wants ml_dtypes bfloat16 arrays
    inputs[2]._parameters["binary_data_size"] = len(inputs[2]._raw_data)
    result = client_for(servers["dtypes"]).infer("dtypes", inputs)
    np.testing.assert_array_equal(result.as_numpy("output0"), ~flags)
    np.testing.assert_array_equal(result.as_numpy("output1"), half * 2)
    doubled = result.get_output("output2")
    assert doubled["datatype"] == "BF16"
    raw = result._buffer[-12:]  # the last binary output: 6 bf16 values
    got = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(2, 3)
    assert torch.equal(got, brain * 2)


def test_bool_json_round_trip(servers: dict[str, ServerProcess]) -> None:
    flags = np.array([[True, False, False]])
    inputs = [
        httpclient.InferInput("flags", [1, 3], "BOOL"),
        httpclient.InferInput("half", [1, 3], "FP16"),
        httpclient.InferInput("brain", [1, 3], "BF16"),
    ]
    inputs[0].set_data_from_numpy(flags, binary_data=False)
    inputs[1].set_data_from_numpy(np.ones((1, 3), np.float16), binary_data=False)
    inputs[2]._raw_data = np.zeros(3, np.uint16).tobytes()
    inputs[2]._parameters["binary_data_size"] = 6
    outputs = [httpclient.InferRequestedOutput("output0", binary_data=False)]
    result = client_for(servers["dtypes"]).infer("dtypes", inputs, outputs=outputs)
    assert result.as_numpy("output0").tolist() == [[False, True, True]]


def test_errors_surface_as_exceptions(servers: dict[str, ServerProcess]) -> None:
    client = client_for(servers["mlp_pt2"])
    tensor = httpclient.InferInput("x", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 63\]"):
        client.infer("mlp", [tensor])
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.infer("other", [tensor])
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.get_model_metadata("mlp", "9")


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_large_and_compressed_requests(
    servers: dict[str, ServerProcess], artifacts: dict[str, Artifact], compression: str | None
) -> None:
    image = np.random.default_rng(5).standard_normal((1024, 1, 8, 8), dtype=np.float32)
    tensor = httpclient.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image)
    result = client_for(servers["cnn"]).infer(
        "cnn", [tensor], request_compression_algorithm=compression
    )
    np.testing.assert_allclose(
        result.as_numpy("output0"),
        expected(artifacts["cnn"].module, image)[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_batch_beyond_the_exported_range_is_400(servers: dict[str, ServerProcess]) -> None:
    tensor = httpclient.InferInput("image", [1025, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1025, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match="batch of 1025 exceeds the model's maximum"):
        client_for(servers["cnn"]).infer("cnn", [tensor])
