"""Models with a behaviour, for traffic tests: a runtime plugin installed as `pip install`
would leave it (a module and a `.dist-info` registering it in `modelplane.runtimes`), put on
the `PYTHONPATH` of the control plane, worker and serving processes a test starts.

Format `behave`: one `.behave` file holding JSON
``{"add": 1, "error_rate": 0.3, "sleep_ms": 200}``; the model answers ``y = x + add`` (so an
answer tells which version served it), sleeps ``sleep_ms`` per call, and fails (500) on
exactly ``error_rate`` of its calls, spread evenly: call n (0-based) fails when
``floor((n + 1) * rate) > floor(n * rate)`` (with 0.3: calls 3, 6, 9, 13, …). Calls whose
``x`` is all zeros (the serving process's warm-up calls before it turns ready) never fail
and are not numbered. Calls are not batched: each is one `predict`, failing or sleeping
alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from contract import formats

FORMAT = "behave"
MODULE = "behave_runtime"

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}

SOURCE = '''
"""The behave runtime (tests/support/behaviour_runtime.py): y = x + add, a sleep, errors."""

import json
import math
import time
from fractions import Fraction
from pathlib import Path

from contract.formats import Layout
from serving.protocol import OutputTensor, TensorSpec
from serving.runtimes.base import ModelError, Runtime


class BehaveRuntime(Runtime):
    layouts = {"behave": Layout("behave", "one behave file (.behave)", suffixes=(".behave",))}

    @property
    def platform(self):
        return "behave"

    def load(self, path):
        graph, _ = self.locate(Path(path))
        spec = json.loads(graph.read_text())
        self.add = float(spec.get("add", 0))
        self.rate = Fraction(str(spec.get("error_rate", 0)))
        self.sleep_s = float(spec.get("sleep_ms", 0)) / 1000
        self.calls = 0
        self.inputs = [TensorSpec("x", "FP32", [-1, 4])]
        self.outputs = [TensorSpec("y", "FP32", [-1, 4])]
        self.batchable = False

    def predict(self, inputs):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        x = inputs["x"]
        if not x.any():  # a warm-up call
            return {"y": OutputTensor("FP32", x + self.add)}
        n, self.calls = self.calls, self.calls + 1
        if math.floor((n + 1) * self.rate) > math.floor(n * self.rate):
            raise ModelError(f"call {n} fails by design (error_rate {float(self.rate)})")
        return {"y": OutputTensor("FP32", inputs["x"] + self.add)}

    def unload(self):
        self.calls = 0
'''


def install(root: Path) -> Path:
    """Writes the runtime module and its `.dist-info` into `root`; returns `root`."""
    (root / f"{MODULE}.py").write_text(SOURCE)
    info = root / "behave_runtime-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: behave-runtime\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{formats.RUNTIMES_GROUP}]\n{FORMAT} = {MODULE}:BehaveRuntime\n"
    )
    return root


def behaviour(add: float, *, error_rate: float = 0.0, sleep_ms: float = 0.0) -> dict[str, bytes]:
    """A version's files: the one `.behave` file (the JSON makes each version's digest its
    own)."""
    spec = {"add": add, "error_rate": error_rate, "sleep_ms": sleep_ms}
    return {"model.behave": json.dumps(spec).encode()}
