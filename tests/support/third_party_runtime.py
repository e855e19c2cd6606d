"""A third party's runtime as `pip install` would leave it: a module on `sys.path` and a
`.dist-info` whose `entry_points.txt` registers it in `modelplane.runtimes`.

Format `acme`: one `.acme` file holding a JSON `{"scale": k}`; the model answers `y = k * x`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract import formats

FORMAT = "acme"
MODULE = "acme_runtime"

SOURCE = '''
"""The acme runtime: light at the top, as the registry and the deployer load it too."""

import json
from pathlib import Path

from contract.formats import Layout
from serving.protocol import OutputTensor, TensorSpec
from serving.runtimes.base import Runtime


class AcmeRuntime(Runtime):
    layouts = {"acme": Layout("acme", "one acme file (.acme)", suffixes=(".acme",))}

    @property
    def platform(self):
        return "acme"

    def load(self, path):
        graph, _ = self.locate(Path(path))
        self.scale = json.loads(graph.read_text())["scale"]
        self.inputs = [TensorSpec("x", "FP32", [-1, 2])]
        self.outputs = [TensorSpec("y", "FP32", [-1, 2])]
        self.batchable = True

    def predict(self, inputs):
        return {"y": OutputTensor("FP32", inputs["x"] * self.scale)}

    def unload(self):
        self.scale = None
'''


def install(root: Path) -> None:
    (root / f"{MODULE}.py").write_text(SOURCE)
    info = root / "acme_runtime-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-runtime\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{formats.RUNTIMES_GROUP}]\n{FORMAT} = {MODULE}:AcmeRuntime\n"
    )


@pytest.fixture
def acme_runtime(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The acme runtime installed for one test (its directory first on `sys.path`)."""
    root = tmp_path_factory.mktemp("site-packages")
    install(root)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    formats.forget_runtimes()
    yield root
    formats.forget_runtimes()
