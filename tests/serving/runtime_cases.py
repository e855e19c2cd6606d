"""One model per runtime for the runtime contract suite, built in the test (no downloads), each
with what its framework answers in process.

Adding a runtime's case: a builder below returning `Case`s (and a `Broken` model that raises
inside on some call, when the runtime can make one), listed in `build_cases`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor, nn

from serving.artifacts import file_sha256
from serving.runtimes.base import manifest

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class Case:
    key: str  # the test id
    format: str
    path: Path  # the lone file, or the version's directory
    name: str  # model name served
    input: str
    datatype: str
    row: tuple[int, ...]  # one row's shape (dimension 0 is the batch)
    outputs: dict[str, tuple[str, list[int]]]  # name → (datatype, shape) in metadata
    reference: Reference  # the framework's own answer, in process
    batchable: bool
    platform: str
    signature: dict[str, Any] | None = None
    rows: int = 3  # rows of a sample call (the fixed batch of a model that takes only that)
    rtol: float = 1e-5
    atol: float = 1e-5

    def args(self, sha256: list[str] | None = None) -> list[str]:
        """Serving flags, with the file's digests (or `sha256` given instead)."""
        args = ["--name", self.name, "--format", self.format, "--path", str(self.path)]
        if self.signature is not None:
            args += ["--signature", orjson.dumps(self.signature).decode()]
        for digest in digests(self.path) if sha256 is None else sha256:
            args += ["--sha256", digest]
        return args

    def sample(self, seed: int = 0, rows: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        shape = (self.rows if rows is None else rows, *self.row)
        return rng.standard_normal(shape).astype(np.float32)


@dataclass
class Broken:
    """A model that raises inside on `call` (which passes every check against its specs) and
    answers `fine`."""

    key: str
    format: str
    path: Path
    name: str
    input: str
    call: np.ndarray
    fine: np.ndarray
    signature: dict[str, Any] | None = None

    def args(self) -> list[str]:
        args = ["--name", self.name, "--format", self.format, "--path", str(self.path)]
        if self.signature is not None:
            args += ["--signature", orjson.dumps(self.signature).decode()]
        return args


def digests(path: Path) -> list[str]:
    """`--sha256` values: HEX for a file, RELPATH=HEX per file of a directory."""
    if path.is_file():
        return [file_sha256(path)]
    return [f"{relpath}={file_sha256(path / relpath)}" for relpath, _ in manifest(path)]


def spec(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


# -- PyTorch ---------------------------------------------------------------------------------


class Fragile(nn.Module):
    """Raises inside the TorchScript interpreter on inputs over 100."""

    def forward(self, x: Tensor) -> Tensor:
        if bool((x > 100).any()):
            raise ValueError("inputs over 100 are out of range")
        return x * 2


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).eval()


def _torch_reference(module: nn.Module, output: str) -> Reference:
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {output: module(torch.from_numpy(x)).numpy()}

    return run


def torch_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    mlp = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: deprecated, served
        torch.jit.save(torch.jit.script(mlp), root / "mlp.pt")
        torch.jit.save(torch.jit.script(Fragile()), root / "fragile.pt")
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(mlp, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, root / "mlp.pt2")
    signature = {"inputs": [spec("x", "FP32", [-1, 4])], "outputs": [spec("y", "FP32", [-1, 3])]}
    cases = [
        Case(
            "torchscript",
            "torchscript",
            root / "mlp.pt",
            "mlp",
            "x",
            "FP32",
            (4,),
            {"y": ("FP32", [-1, 3])},
            _torch_reference(mlp, "y"),
            batchable=True,
            platform="pytorch_torchscript",
            signature=signature,
        ),
        Case(
            "torch_export",
            "torch_export",
            root / "mlp.pt2",
            "mlp",
            "input",
            "FP32",
            (4,),
            {"output0": ("FP32", [-1, 3])},
            _torch_reference(mlp, "output0"),
            batchable=True,
            platform="pytorch_torch_export",
        ),
    ]
    broken = Broken(
        "torch",
        "torchscript",
        root / "fragile.pt",
        "fragile",
        "x",
        np.full((1, 4), 1000, np.float32),
        np.ones((3, 4), np.float32),
        {"inputs": [spec("x", "FP32", [-1, 4])], "outputs": [spec("y", "FP32", [-1, 4])]},
    )
    return cases, [broken]


# -- ONNX Runtime ----------------------------------------------------------------------------


def _ort_reference(path: Path) -> Reference:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))

    return run


def onnx_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    """An MLP exported from PyTorch with a symbolic batch dimension; the same MLP with a
    fixed batch of 2 and its weights as external data (a directory of two files)."""
    import onnx

    mlp = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(
            mlp,
            (torch.zeros(2, 4),),
            str(root / "mlp.onnx"),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
        fixed = root / "fixed.onnx"
        torch.onnx.export(
            mlp, (torch.zeros(2, 4),), str(fixed), dynamo=False,
            input_names=["x"], output_names=["y"],
        )  # fmt: skip
    external = root / "external"
    external.mkdir()
    model = onnx.load(str(fixed))
    onnx.save_model(
        model,
        str(external / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    fixed.unlink()
    cases = [
        Case(
            "onnx",
            "onnx",
            root / "mlp.onnx",
            "mlp",
            "x",
            "FP32",
            (4,),
            {"y": ("FP32", [-1, 3])},
            _ort_reference(root / "mlp.onnx"),
            batchable=True,
            platform="onnxruntime_onnx",
        ),
        Case(
            "onnx_external_data",
            "onnx",
            external,
            "fixed",
            "x",
            "FP32",
            (4,),
            {"y": ("FP32", [2, 3])},
            _ort_reference(external / "model.onnx"),
            batchable=False,
            platform="onnxruntime_onnx",
            rows=2,
        ),
    ]
    return cases, [_reshape_model(root / "reshape.onnx")]


def _reshape_model(path: Path) -> Broken:
    """x [n, 4] reshaped to [1, 4]: fine for 1 row, fails inside the graph for 3."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return Broken(
        "onnx",
        "onnx",
        path,
        "reshape",
        "x",
        np.ones((3, 4), np.float32),
        np.ones((1, 4), np.float32),
    )


# -- scikit-learn, as ONNX -------------------------------------------------------------------


def sklearn_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    """A classifier with integer classes (label INT64) and one with strings (label BYTES),
    converted the way `Client.push_sklearn` does, answered by the estimator in process."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from client.sklearn import convert

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)  # three classes
    logistic = LogisticRegression(max_iter=500).fit(x, y)
    names = np.array(["bird", "cat", "dog"])[y]
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, names)
    cases = []
    for key, estimator, label in [
        ("sklearn_logistic", logistic, "INT64"),
        ("sklearn_tree_strings", tree, "BYTES"),
    ]:
        path = root / f"{key}.onnx"
        signature, _ = convert(estimator, x[:4], path)
        cases.append(
            Case(
                key,
                "onnx",
                path,
                key.replace("_", "-"),
                "X",
                "FP32",
                (4,),
                {"label": (label, [-1]), "probabilities": ("FP32", [-1, 3])},
                _sklearn_reference(estimator),
                batchable=True,
                platform="onnxruntime_onnx",
                signature=signature,
                rtol=1e-4,
                atol=1e-5,
            )
        )
    return cases, []


def _sklearn_reference(estimator: Any) -> Reference:
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "label": estimator.predict(x),
            "probabilities": estimator.predict_proba(x).astype(np.float32),
        }

    return run


# -- Keras, TensorFlow SavedModel ------------------------------------------------------------
# In their own module (it sets KERAS_BACKEND=torch on import, before anything imports keras),
# imported when built: that module imports `Case` and `Broken` from this one.


def keras_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    from tests.serving.runtime_cases_keras_tf import keras_cases

    return keras_cases(root)


def tensorflow_cases(root: Path) -> tuple[list[Case], list[Broken]]:
    from tests.serving.runtime_cases_keras_tf import tensorflow_cases

    return tensorflow_cases(root)


BUILDERS: dict[str, Callable[[Path], tuple[list[Case], list[Broken]]]] = {
    "torch": torch_cases,
    "onnx": onnx_cases,
    "sklearn": sklearn_cases,
    "keras": keras_cases,
    "tensorflow": tensorflow_cases,
}


def build_cases(root: Path) -> tuple[dict[str, Case], dict[str, Broken]]:
    cases: dict[str, Case] = {}
    broken: dict[str, Broken] = {}
    for family, build in BUILDERS.items():
        directory = root / family
        directory.mkdir()
        made, fragile = build(directory)
        cases.update((c.key, c) for c in made)
        broken.update((b.key, b) for b in fragile)
    return cases, broken
