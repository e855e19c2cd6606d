"""Declared pipelines in real serving processes: a CIFAR-10-shaped CNN pushed with an image
pipeline and ten class names answers an uploaded picture the same over TorchServe, TF Serving
(`{"b64"}`) and v2 (a BYTES element); bad images are 400 with the reason; a text pipeline
tokenises with the version's `tokenizer.json`; a pipeline that does not fit its model stops
the process before it serves.

Expected answers come from the module in-process on pixels normalised here with numpy
(softmax, top-3): labels identical, scores within 1e-5 absolute (float32 arithmetic in a
different order)."""

from __future__ import annotations

import base64
import http.client
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as triton
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import Tensor, nn

from bench.pipeline import CLASSES, PIPELINE, SIGNATURE, normalise, png, save_classifier
from tests.serving.conftest import ServerProcess, StartServer

MAX_PIXELS = 4096
MAX_BYTES = 64 << 10
TOLERANCE = 1e-5
PIXELS = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
VOCAB = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "there": 4}


class TokenSum(nn.Module):
    """Per text: the sum of its token ids, and its token count."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return torch.stack([(input_ids * attention_mask).sum(1), attention_mask.sum(1)], 1).float()


def cifar_args(directory: Path) -> list[str]:
    return [
        *("--name", "cifar", "--format", "torchscript", "--path", str(directory)),
        *("--signature", orjson.dumps(SIGNATURE).decode()),
    ]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    directory = tmp_path_factory.mktemp("cifar")
    step = {**PIPELINE["input"][0], "max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES}
    module = save_classifier(directory, {**PIPELINE, "input": [step]})
    return directory, module


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("text")
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.jit.save(torch.jit.script(TokenSum()), directory / "model.pt")
    pipeline = {"input": [{"type": "text", "max_length": 8}]}
    (directory / "pipeline.json").write_bytes(orjson.dumps(pipeline))
    return directory


@pytest.fixture(scope="module")
def served(
    classifier: tuple[Path, nn.Module], text_model: Path, log_dir: Path
) -> Iterator[dict[str, ServerProcess]]:
    signature = {
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
        ],
        "outputs": [{"name": "sums", "datatype": "FP32", "shape": [-1, 2]}],
    }
    started = {
        "cifar": ServerProcess(
            cifar_args(classifier[0]) + ["--max-delay-ms", "2"], log_dir, "cifar"
        ),
        "text": ServerProcess(
            [
                *("--name", "tokens", "--format", "torchscript", "--path", str(text_model)),
                *("--signature", orjson.dumps(signature).decode()),
            ],
            log_dir,
            "tokens",
        ),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        connection.close()


def expected_top3(module: nn.Module, tensor: np.ndarray[Any, Any]) -> list[list[dict[str, Any]]]:
    with torch.inference_mode():
        probabilities = torch.softmax(module(torch.from_numpy(tensor)), dim=1).numpy()
    rows = []
    for row in probabilities:
        top = np.argsort(-row, kind="stable")[:3]
        rows.append([{"label": CLASSES[i], "index": int(i), "score": float(row[i])} for i in top])
    return rows


def assert_same(got: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> None:
    assert [(g["label"], g["index"]) for g in got] == [(w["label"], w["index"]) for w in wanted]
    np.testing.assert_allclose(
        [g["score"] for g in got], [w["score"] for w in wanted], atol=TOLERANCE
    )


def test_image_classifier_answers_alike_over_torchserve_v1_and_v2(
    served: dict[str, ServerProcess], classifier: tuple[Path, nn.Module]
) -> None:
    server, module = served["cifar"], classifier[1]
    image = png(PIXELS[0])
    [wanted] = expected_top3(module, normalise(PIXELS[0]))

    for method, headers in (("PUT", {"Content-Type": "image/png"}), ("POST", {})):  # curl -T
        status, body = call(server, method, "/predictions/cifar", image, headers)
        assert status == 200, body
        assert_same(body, wanted)

    b64 = {"b64": base64.b64encode(image).decode()}
    status, body = call(
        server, "POST", "/v1/models/cifar:predict", orjson.dumps({"instances": [b64]})
    )
    assert status == 200, body
    assert_same(body["predictions"][0], wanted)

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    given = triton.InferInput("image", [1], "BYTES")
    given.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
    result = client.infer("cifar", [given])
    labels = [b.decode() for b in result.as_numpy("label")[0]]
    got = [
        {"label": label, "index": int(index), "score": float(score)}
        for label, index, score in zip(
            labels, result.as_numpy("index")[0], result.as_numpy("score")[0], strict=True
        )
    ]
    assert_same(got, wanted)
    metadata = client.get_model_metadata("cifar")
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "index", "score"]

    tensor = triton.InferInput("image", [1, 3, 32, 32], "FP32")  # the tensor itself skips it
    tensor.set_data_from_numpy(normalise(PIXELS[0]), binary_data=True)
    direct = client.infer("cifar", [tensor])
    assert [b.decode() for b in direct.as_numpy("label")[0]] == labels
    client.close()


def test_torchserve_takes_a_multipart_form_file(
    served: dict[str, ServerProcess], classifier: tuple[Path, nn.Module]
) -> None:
    image = png(PIXELS[1])
    boundary = "----modelplane"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="cat.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, body = call(served["cifar"], "POST", "/predictions/cifar/1", form, headers)
    assert status == 200, body
    assert_same(body, expected_top3(classifier[1], normalise(PIXELS[1]))[0])


def test_several_images_in_one_call_are_one_row_each(
    served: dict[str, ServerProcess], classifier: tuple[Path, nn.Module]
) -> None:
    instances = [{"b64": base64.b64encode(png(p)).decode()} for p in PIXELS]
    status, body = call(
        served["cifar"], "POST", "/v1/models/cifar:predict", orjson.dumps({"instances": instances})
    )
    assert status == 200, body
    wanted = expected_top3(classifier[1], np.concatenate([normalise(p) for p in PIXELS]))
    for got, want in zip(body["predictions"], wanted, strict=True):
        assert_same(got, want)
    columnar = {"inputs": {"image": instances}}
    status, body = call(served["cifar"], "POST", "/v1/models/cifar:predict", orjson.dumps(columnar))
    assert status == 200, body
    assert body["outputs"]["label"] == [[w["label"] for w in row] for row in wanted]


def test_larger_images_are_resized_and_center_cropped(
    served: dict[str, ServerProcess], classifier: tuple[Path, nn.Module]
) -> None:
    """torchvision's Resize(32) then CenterCrop(32): 48x40 → 38x32 (shorter side 32, the
    longer truncated), then columns 3..35."""
    pixels = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    resized = Image.fromarray(pixels).resize((38, 32), Image.Resampling.BILINEAR)
    cropped = np.asarray(resized.crop((3, 0, 35, 32)))
    status, body = call(served["cifar"], "POST", "/predictions/cifar", png(pixels))
    assert status == 200, body
    assert_same(body, expected_top3(classifier[1], normalise(cropped))[0])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side×side black pixels: a few KiB that decode to side² pixels."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


BAD_IMAGES: dict[str, tuple[bytes, str]] = {
    "not_an_image": (b"GIF89a-but-not-really" * 10, "not an image (JPEG, PNG or WebP expected)"),
    "truncated": (png(PIXELS[0])[:1500], "cannot decode the image: image file is truncated"),
    "decompression_bomb": (
        bomb_png(15000),
        "image of 15000x15000 pixels is over the limit of 4096 pixels (decompression bomb",
    ),
    "over_the_pixel_limit": (
        png(np.zeros((60, 80, 3), np.uint8)),
        "image of 80x60 pixels is over the limit of 4096 pixels",
    ),
    "over_the_byte_limit": (b"\x89PNG" + b"\x00" * MAX_BYTES, f"over the limit of {MAX_BYTES}"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_400_with_the_reason(served: dict[str, ServerProcess], case: str) -> None:
    image, reason = BAD_IMAGES[case]
    server = served["cifar"]
    status, body = call(server, "POST", "/predictions/cifar", image)
    assert (status, body["code"], body["type"]) == (400, 400, "BadRequestException"), body
    assert reason in body["message"] and "Traceback" not in body["message"], body
    b64 = {"b64": base64.b64encode(image).decode()}
    status, body = call(
        server, "POST", "/v1/models/cifar:predict", orjson.dumps({"instances": [b64]})
    )
    assert status == 400 and reason in body["error"], body
    raw = len(image).to_bytes(4, "little") + image
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    status, body = call(
        server,
        "POST",
        "/v2/models/cifar/infer",
        header + raw,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and reason in body["error"], body
    assert call(server, "GET", "/ping", b"") == (200, {"status": "Healthy"})


def test_text_pipeline_tokenises_with_the_versions_tokenizer(
    served: dict[str, ServerProcess],
) -> None:
    server = served["text"]
    doc = {"instances": ["hello world", "there"]}
    status, body = call(server, "POST", "/v1/models/tokens:predict", orjson.dumps(doc))
    assert status == 200, body
    assert body["predictions"] == [[5.0, 2.0], [4.0, 1.0]]  # ids 2+3, 4; padded with 0
    status, body = call(server, "POST", "/predictions/tokens", b"hello hello nope", {})
    assert (status, body) == (200, [5.0, 3.0]), body  # [UNK] is 1
    status, body = call(server, "POST", "/predictions/tokens", b" ".join([b"there"] * 20))
    assert (status, body) == (200, [32.0, 8.0]), body  # truncated at max_length 8
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["world world"]}]}
    status, body = call(server, "POST", "/v2/models/tokens/infer", orjson.dumps(v2))
    assert status == 200, body
    assert body["outputs"][0]["data"] == [6.0, 2.0]
    status, body = call(server, "POST", "/v1/models/tokens:predict", b'{"instances": [[1, 2]]}')
    assert status == 400 and "BYTES values are strings" in body["error"], body
    ids = {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [2]}]}
    status, body = call(server, "POST", "/v2/models/tokens/infer", orjson.dumps(ids))
    assert status == 400 and "input 'text' takes strings as BYTES, got INT64" in body["error"]


def test_pipeline_that_does_not_fit_the_model_stops_the_process(
    start_server: StartServer, tmp_path: Path
) -> None:
    directory = tmp_path / "misfit"
    save_classifier(directory, {"input": [{"type": "image", "resize": 16, "crop": 16}]})
    server = start_server(cifar_args(directory), "misfit")
    assert server.process.wait(90) == 1
    assert "the image step makes [1, 3, 16, 16]" in server.log
    assert "the model expects [-1, 3, 32, 32]" in server.log
