"""The pipeline's steps in-process (what the serving tests reach through HTTP, here one step
at a time): JPEG, WebP and grayscale decoding, HWC layout, argmax and top-k with labels from
TorchServe's `index_to_name.json`, and the refusals of a pipeline that cannot be used."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from contract.pipeline import parse_pipeline
from serving.artifacts import ArtifactError
from serving.pipeline import Pipeline, load_pipeline, read_labels
from serving.protocols.v2 import OutputTensor, ProtocolError, RequestInput, TensorSpec

PIXELS = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def encoded(pixels: np.ndarray[Any, Any], kind: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, **options)
    return buffer.getvalue()


def images(*blobs: bytes, name: str = "image") -> list[RequestInput]:
    data = np.empty(len(blobs), dtype=object)
    data[:] = list(blobs)
    return [RequestInput(name, "BYTES", (len(blobs),), data)]


def bound(doc: dict[str, Any], tmp_path: Path, shape: list[int]) -> Pipeline:
    pipeline = Pipeline(parse_pipeline(doc), tmp_path)
    pipeline.bind([TensorSpec("image", "FP32", shape)], [TensorSpec("y", "FP32", [-1, 4])])
    return pipeline


@pytest.mark.parametrize("kind", ["PNG", "WEBP"])
def test_lossless_images_decode_to_their_exact_pixels(tmp_path: Path, kind: str) -> None:
    pipeline = bound({"input": [{"type": "image"}]}, tmp_path, [-1, 3, 16, 16])
    options = {"lossless": True} if kind == "WEBP" else {}
    [made] = pipeline.prepare(images(encoded(PIXELS, kind, **options)))
    assert (made.name, made.datatype, made.shape) == ("image", "FP32", (1, 3, 16, 16))
    expected = PIXELS.transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_allclose(made.data, expected, atol=1e-6)


def test_jpeg_decodes_close_to_its_pixels_in_hwc(tmp_path: Path) -> None:
    pipeline = bound(
        {"input": [{"type": "image", "layout": "HWC", "scale": 1}]}, tmp_path, [-1, 16, 16, 3]
    )
    flat = np.full((16, 16, 3), 120, np.uint8)
    [made] = pipeline.prepare(images(encoded(flat, "JPEG", quality=95)))
    assert made.shape == (1, 16, 16, 3)
    assert np.abs(made.data - 120).max() <= 2  # JPEG is lossy, a flat image barely so


def test_grayscale_mode_makes_one_channel_with_mean_and_std(tmp_path: Path) -> None:
    doc = {"input": [{"type": "image", "mode": "L", "mean": [0.5], "std": [0.25]}]}
    pipeline = bound(doc, tmp_path, [-1, 1, 16, 16])
    gray = np.asarray(Image.fromarray(PIXELS).convert("L"), np.float32)
    [made] = pipeline.prepare(images(encoded(PIXELS, "PNG")))
    np.testing.assert_allclose(made.data[0, 0], (gray / 255 - 0.5) / 0.25, atol=1e-5)


def test_images_of_different_sizes_need_resize_and_crop(tmp_path: Path) -> None:
    pipeline = bound({"input": [{"type": "image"}]}, tmp_path, [-1, 3, -1, -1])
    other = encoded(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(ProtocolError, match="images decode to different sizes"):
        pipeline.prepare(images(encoded(PIXELS, "PNG"), other))


def test_argmax_answers_label_index_and_score(tmp_path: Path) -> None:
    (tmp_path / "index_to_name.json").write_bytes(
        orjson.dumps({"0": ["n01", "cat"], "1": ["n02", "dog"], "2": "fish", "3": "bird"})
    )
    pipeline = bound({"output": [{"type": "softmax"}, {"type": "argmax"}]}, tmp_path, [-1, 4])
    assert [s.name for s in pipeline.outputs] == ["label", "index", "score"]
    logits = np.array([[0.0, 3.0, 1.0, 0.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    outputs = pipeline.finish({"y": OutputTensor("FP32", logits)})
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert [b.decode() for b in outputs["label"].data] == ["dog", "cat"]
    records = pipeline.records(outputs)
    assert records is not None
    assert [(r["label"], r["index"]) for r in records] == [("dog", 1), ("cat", 0)]
    np.testing.assert_allclose([r["score"] for r in records], probabilities.max(axis=1), rtol=1e-6)


def test_topk_without_labels_answers_indices(tmp_path: Path) -> None:
    pipeline = bound({"output": [{"type": "topk", "k": 2}]}, tmp_path, [-1, 4])
    outputs = pipeline.finish({"y": OutputTensor("FP32", np.array([[1, 4, 3, 2]], np.float32))})
    assert sorted(outputs) == ["index", "score"]
    assert pipeline.records(outputs) == [[{"index": 1, "score": 4.0}, {"index": 2, "score": 3.0}]]


def test_labels_txt_ignores_trailing_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog \n\n")
    assert read_labels(tmp_path, None) == ["cat", "dog"]


UNUSABLE: dict[str, tuple[dict[str, Any], list[int], str]] = {
    "wrong_label_count": (
        {"output": [{"type": "argmax"}], "labels": "labels.txt"},
        [-1, 4],
        "3 labels",
    ),
    "integer_input": (
        {"input": [{"type": "image", "input": "image"}]},
        [-1, 3, 16, 16],
        "makes floats",
    ),
    "unknown_input": (
        {"input": [{"type": "image", "input": "pixels"}]},
        [-1, 3, 16, 16],
        "'pixels'",
    ),
    "no_tokenizer": ({"input": [{"type": "text"}]}, [-1, 4], "tokenizer 'tokenizer.json'"),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_pipelines_are_refused_with_the_reason(tmp_path: Path, case: str) -> None:
    doc, shape, reason = UNUSABLE[case]
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    datatype = "UINT8" if case == "integer_input" else "FP32"
    (tmp_path / "pipeline.json").write_bytes(orjson.dumps(doc))
    with pytest.raises(ArtifactError, match=reason):
        pipeline = load_pipeline(tmp_path)
        assert pipeline is not None
        pipeline.bind([TensorSpec("image", datatype, shape)], [TensorSpec("y", "FP32", [-1, 4])])
