"""Pushing for the runtimes: an example input recorded by `modelplane push --example` reaches the
serving process (a TorchScript model without a signature names its outputs once deployed);
pickled estimators are refused before anything is sent; an `.onnx` made elsewhere is pushed
with `--format onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from client import BadRequest, Client, ModelplaneError
from client.sklearn import convert
from tests.client.conftest import Up, unique
from tests.client.test_cli import run_json
from tests.client.test_sdk import Mlp, delete_and_wait

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")


def test_an_unsigned_torchscript_pushed_with_an_example_names_its_outputs_when_deployed(
    up: Up, tmp_path: Path
) -> None:
    name = unique("unsigned")
    module = Mlp(3).eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "model.pt"))
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    pushed = run_json(
        up, "push", name, str(tmp_path / "model.pt"), "--example", str(tmp_path / "x.npy")
    )
    assert pushed["signature"] is None
    assert pushed["metadata"]["example"]["inputs"][0]["shape"] == [2, 4]
    assert "example input" in pushed["signature_hint"]
    with up.client() as sdk:
        try:
            sdk.deploy(name, version=pushed["version"])
            sdk.wait_ready(name, timeout=120)
            meta = sdk.model_metadata(name)  # before any call: learned at warm-up
            assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
            assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}]
            x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
            with torch.inference_mode():
                want = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(sdk.infer(name, x)["output0"], want, rtol=1e-5, atol=1e-6)
            with pytest.raises(BadRequest) as refused:
                sdk.infer(name, np.ones((1, 5), np.float32))
            message = str(refused.value)
            assert "input 'features'" in message and "\n" not in message, message
        finally:
            delete_and_wait(sdk, name, up)


def test_pickled_estimators_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"not sent")
    sdk = Client("http://127.0.0.1:9", "no-token", retries=0)  # nothing listens there
    with sdk, pytest.raises(ModelplaneError, match="push_sklearn") as refused:
        sdk.push("iris", tmp_path / "model.joblib")
    assert "skl2onnx" in str(refused.value)


def test_an_onnx_file_made_elsewhere_is_pushed_with_its_example(up: Up, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 4))
    estimator = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    convert(estimator, x[:2], tmp_path / "iris.onnx")
    np.save(tmp_path / "x.npy", x[:2].astype(np.float32))
    name = unique("onnx")
    pushed = run_json(
        up, "push", name, str(tmp_path / "iris.onnx"), "--format", "onnx",
        "--example", f"X={tmp_path / 'x.npy'}",
    )  # fmt: skip
    assert pushed["format"] == "onnx" and pushed["signature_hint"] is None
    [example] = pushed["metadata"]["example"]["inputs"]
    assert example["name"] == "X" and example["datatype"] == "FP32" and example["shape"] == [2, 4]
    assert json.dumps(example["data"])  # recorded as numbers
