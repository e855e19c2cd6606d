"""Runtimes are found by format through the `modelplane.runtimes` entry points, each owns its
artifact layout (`contract.formats`, read without its framework), and a third party's runtime
joins the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from contract import formats
from contract.formats import LAYOUTS, LayoutError, PickledObject, UnknownFormat
from contract.serving import SETTINGS_ENV, ServingSpec
from serving.artifacts import ArtifactError
from serving.runtimes import BUILTIN, RuntimeOptions, runtime_for
from tests.serving.conftest import StartServer
from tests.support.third_party_runtime import FORMAT, acme_runtime  # noqa: F401 - a fixture

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_entry_points_are_the_builtin_table() -> None:
    installed = {name: ep.value for name, ep in formats.runtime_entry_points().items()}
    assert {name: installed.get(name) for name in BUILTIN} == BUILTIN


def test_every_builtin_runtime_owns_the_layouts_of_its_formats() -> None:
    for fmt in ("torchscript", "torch_export", "safetensors", "pickle", "onnx"):
        assert runtime_for(fmt).layouts[fmt] is LAYOUTS[fmt]


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ArtifactError, match="unknown format 'tensorrt'; known formats: .*onnx"):
        runtime_for("tensorrt")


@pytest.mark.system
def test_reading_a_runtime_s_layouts_imports_no_framework() -> None:
    """The registry and the deployer read layouts: the ONNX runtime's module stays light."""
    code = (
        "import sys; from serving.runtimes import runtime_for; "
        "assert runtime_for('onnx').layouts['onnx'].format == 'onnx'; "
        "import contract.formats, deployer.cache; "
        "print(sorted(m for m in ('onnxruntime', 'torch', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("fmt", "files", "graph", "single"),
    [
        ("torchscript", [("model.pt", 9)], "model.pt", True),
        ("torchscript", [("model.pt", 9), ("labels.txt", 3)], "model.pt", False),
        ("torch_export", [("m.pt2", 9)], "m.pt2", True),
        ("safetensors", [("g.pt", 9), ("w/a.safetensors", 9)], "g.pt", False),
        ("onnx", [("model.onnx", 9)], "model.onnx", True),
        ("onnx", [("m/model.onnx", 9), ("m/weights.bin", 2**32)], "m/model.onnx", False),
        ("keras", [("model.keras", 9)], "model.keras", True),
        (
            "tf_savedmodel",
            [("1/saved_model.pb", 9), ("1/variables/variables.index", 9)],
            "1/saved_model.pb",
            False,
        ),
    ],
)
def test_a_layout_finds_the_graph_and_what_serving_is_given(
    fmt: str, files: list[tuple[str, int]], graph: str, single: bool
) -> None:
    found = formats.artifact(fmt, files)
    assert found is not None and (found.graph, found.single_file) == (graph, single)


@pytest.mark.parametrize(
    ("fmt", "files", "says"),
    [
        ("onnx", [("model.pt", 9)], "one ONNX file (.onnx); found none among [model.pt]"),
        ("onnx", [("a.onnx", 9), ("b.onnx", 9)], "found [a.onnx, b.onnx]"),
        ("onnx", [("big.onnx", 2**31)], "save the weights as external data"),
        ("onnx", [("empty.onnx", 0)], "empty"),
        ("torch_export", [("model.pt", 9)], "(.pt2)"),
        ("safetensors", [("g.pt", 9)], "at least one .safetensors"),
        ("tf_savedmodel", [("model.pb", 9)], "saved_model.pb"),
    ],
)
def test_files_that_cannot_make_the_format_say_what_would(
    fmt: str, files: list[tuple[str, int]], says: str
) -> None:
    with pytest.raises(LayoutError) as caught:
        formats.artifact(fmt, files)
    assert says in str(caught.value)


def test_pickled_estimators_are_refused_but_torch_s_pickle_format_keeps_pkl() -> None:
    with pytest.raises(PickledObject, match="push_sklearn"):
        formats.check_version(None, [("model.joblib", 9)])
    with pytest.raises(PickledObject):
        formats.check_version("pickle", [("model.joblib", 9)])
    assert formats.check_version("pickle", [("module.pkl", 9)]) is not None
    with pytest.raises(UnknownFormat):
        formats.check_version("tensorrt", [("m.plan", 9)])


def test_a_third_party_runtime_is_found_by_its_format_and_serves(
    acme_runtime: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert FORMAT in formats.known_formats()
    (tmp_path / "model.acme").write_text('{"scale": 3}')
    runtime = runtime_for(FORMAT)(FORMAT, RuntimeOptions())
    runtime.load(tmp_path)
    out = runtime.predict({"x": np.ones((2, 2), np.float32)})
    np.testing.assert_array_equal(out["y"].data, np.full((2, 2), 3, np.float32))
    (tmp_path / "model.bin").write_text("{}")
    (tmp_path / "model.acme").unlink()
    with pytest.raises(ArtifactError, match=r"one acme file \(.acme\)"):
        runtime_for(FORMAT)(FORMAT, RuntimeOptions()).load(tmp_path)


@pytest.mark.system
def test_a_third_party_format_starts_a_serving_process_and_answers(
    acme_runtime: Path,  # noqa: F811
    tmp_path: Path,
    start_server: StartServer,
) -> None:
    (tmp_path / "model.acme").write_text('{"scale": 2}')
    settings = {"name": "acme-model", "format": FORMAT, "path": str(tmp_path / "model.acme")}
    env = {SETTINGS_ENV: json.dumps(settings), "PYTHONPATH": f"{REPO}:{acme_runtime}"}
    server = start_server([], "acme", env).wait_ready()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2]}]}
    answer = httpx.post(f"{server.url}/v2/models/acme-model/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [3.0, 4.0]


def test_an_unknown_format_is_refused_in_the_serving_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown format 'tensorrt'; known: .*onnx"):
        ServingSpec(name="m", format="tensorrt", path=tmp_path)
