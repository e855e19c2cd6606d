"""The runtime plug-in point: what turns a version's files into something that answers calls.

Torch-free, like everything a serving process imports before it knows its format: a
runtime's framework (torch, onnxruntime, ...) is imported by its own module only, which
only the serving process that serves that format imports (`serving.runtimes.runtime_for`).

A runtime is a `Runtime` subclass registered by format in the `modelplane.runtimes`
entry-point group (pyproject.toml). Its `layouts` say which files make a version of each of
its formats (`contract.formats`: the registry refuses a version whose files cannot, the
deployer hands the serving process the lone file or the directory, `locate` finds the graph
with the same rule). `tests/serving/test_runtime_contract.py` holds every runtime to the
same behaviour.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from contract.dtypes import NUMERIC_DTYPES
from contract.enums import Device
from contract.formats import Artifact, FormatError, Layout, artifact
from serving.artifacts import ArtifactError, Signature
from serving.protocol import OutputTensor, ProtocolError, TensorSpec

Inputs = dict[str, np.ndarray[Any, Any]]
Outputs = dict[str, OutputTensor]
R = TypeVar("R")
MAX_ERROR_CHARS = 400  # a model's error, as one line in an answer


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What the serving process tells any runtime; each uses what applies to it."""

    device: Device = Device.auto
    signature: Signature = field(default_factory=Signature)  # declared specs, and the example
    allow_pickle: bool = False  # torch's `pickle` format only
    intra_op_threads: int = 1  # threads one call may use (1: no contention with the loop)
    inter_op_threads: int = 1  # independent graph branches run at once
    max_batch_size: int = 32  # a generation runtime: sequences decoded together
    max_queue: int = 1024  # a generation runtime: requests waiting before 429


class InputsDoNotFit(ProtocolError):
    """The model refused the call's inputs: answered 400, one line naming the input."""


class ModelError(Exception):
    """The model failed on a call: answered 500, one line (never a traceback)."""


class Runtime(ABC):
    """How a serving process runs one model. For implementers:

    - `__init__(model_format, options)` stores settings only: nothing heavy, nothing loaded.
    - `load(path)` reads the artifact (the version's lone file, or its directory: `locate`
      finds the graph file) and gets ready to answer; it raises on any failure, with a
      message an operator can act on (`ArtifactError`). It is called once, on a background
      thread, before the endpoint turns ready; it may warm the model up.
    - After `load`, `inputs` and `outputs` describe the tensors (shapes use -1 for any
      size), and `batchable` says whether calls may be stacked along dimension 0.
      `checked` is False when `inputs` are guesses (then calls are passed through as sent,
      and no warm-up call is made by the server); `max_batch` is the largest dimension 0
      the model accepts (None: no limit known); `platform` is shown in model metadata.
    - `predict(inputs)` gets one numpy array per input name, already checked against
      `inputs` when `checked` (BF16 as `uint16` bit patterns, BYTES as object arrays of
      `bytes`), and returns every output by name. It is only ever called from the one
      inference thread, so it need not be thread-safe. It raises `InputsDoNotFit` (400)
      when the call's inputs do not fit the model, anything else when the model failed
      (500); the serving process turns either into one line.
    - `unload()` frees what `load` took; the process may exit right after.
    - `layouts` (format → `contract.formats.Layout`) is read without loading the model, by
      the registry and the deployer too: keep the module's top free of heavy imports.
    """

    layouts: ClassVar[Mapping[str, Layout]] = {}

    def __init__(self, model_format: str, options: RuntimeOptions | None = None) -> None:
        self.format = str(model_format)
        self.options = options or RuntimeOptions()
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.batchable = False
        self.checked = True
        self.max_batch: int | None = None

    @property
    @abstractmethod
    def platform(self) -> str: ...

    @abstractmethod
    def load(self, path: Path) -> None: ...

    @abstractmethod
    def predict(self, inputs: Inputs) -> Outputs: ...

    @abstractmethod
    def unload(self) -> None: ...

    @classmethod
    def check_files(cls, model_format: str, files: Any) -> Artifact | None:
        """What a version's manifest ((path, size) pairs) makes as `model_format`, by this
        runtime's layout; raises `contract.formats.LayoutError` saying why it cannot."""
        layout = cls.layouts.get(str(model_format))
        return None if layout is None else layout.check(files)

    def locate(self, path: Path) -> tuple[Path, Artifact]:
        """The graph file of `path` (a version's lone file, or its directory) and what the
        files make, by the format's layout: the rule the registry checked at push."""
        if not path.exists():
            raise ArtifactError(f"{path} does not exist")
        root, files = (
            (path.parent, [(path.name, path.stat().st_size)])
            if path.is_file()
            else (
                path,
                manifest(path),
            )
        )
        try:
            found = artifact(self.format, files)
        except FormatError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        if found is None:
            raise ArtifactError(f"format {self.format} has no layout to find its graph file")
        return root / found.graph, found

    def warm_up(
        self,
        run: Callable[[Inputs], R],
        example: Inputs | None = None,
        reason: Callable[[BaseException], str] | None = None,
    ) -> R:
        """One call before the endpoint turns ready, through `run` (`predict`, or the
        runtime's own call), on
        `example` or the recorded example when it names every input, else zeros: proves the
        model runs. A failure is an `ArtifactError` with `reason(exc)` (default `one_line`)."""
        example = self.example() if example is None else example
        if example is None or set(example) != {s.name for s in self.inputs}:
            example = {s.name: example_input(s) for s in self.inputs}
        try:
            return run(example)
        except Exception as exc:
            raise ArtifactError(f"the warm-up call failed: {(reason or one_line)(exc)}") from exc

    def learn_shapes(self, results: Outputs, names: Collection[str]) -> None:
        """The outputs in `names` (their rank unknown to the graph) take the shapes a call
        answered, with -1 in dimension 0 when calls batch."""
        self.outputs = [
            spec_of(s.name, s.datatype, results[s.name].data.shape, self.batchable)
            if s.name in names
            else s
            for s in self.outputs
        ]

    def example(self) -> Inputs | None:
        """The version's recorded example input as arrays by input name (None: none)."""
        return example_arrays(self.options.signature.example, self.inputs)


def manifest(directory: Path) -> list[tuple[str, int]]:
    """Every file under `directory` as (relative POSIX path, size), as a version lists them."""
    found = []
    for dirpath, _dirs, names in os.walk(directory):
        for name in names:
            full = Path(dirpath, name)
            if full.is_file():
                found.append((full.relative_to(directory).as_posix(), full.stat().st_size))
    return sorted(found)


def example_input(spec: TensorSpec) -> np.ndarray[Any, Any]:
    """Zeros (or b"warm-up" strings) of the spec's datatype, one row where a dim is -1."""
    shape = [1 if d == -1 else d for d in spec.shape]
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill(b"warm-up")
        return array
    return np.zeros(shape, dtype=NUMERIC_DTYPES[spec.datatype])


def example_arrays(example: Mapping[str, Any] | None, specs: list[TensorSpec]) -> Inputs | None:
    """A recorded example (`contract.examples`) as arrays: named inputs by name, unnamed
    ones in the model's input order; zeros where its data was too big to record."""
    if not example:
        return None
    arrays: Inputs = {}
    for position, item in enumerate(example["inputs"]):
        name = item.get("name")
        if name is None:
            if position >= len(specs):
                raise ArtifactError(
                    f"the example has {len(example['inputs'])} inputs; the model takes "
                    f"{[s.name for s in specs]}"
                )
            name = specs[position].name
        arrays[name] = _array(item)
    return arrays


def _array(item: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    shape, data, datatype = item["shape"], item.get("data"), item["datatype"]
    if datatype == "BYTES":
        array = np.empty(len(data) if data is not None else int(np.prod(shape)), dtype=object)
        array[:] = [str(v).encode() for v in data] if data is not None else b"warm-up"
        return array.reshape(shape)
    dtype = NUMERIC_DTYPES[datatype]
    if data is None:
        return np.zeros(shape, dtype=dtype)
    return np.asarray(data, dtype=dtype).reshape(shape)


def spec_of(name: str, datatype: str, shape: tuple[int, ...], batch: bool) -> TensorSpec:
    """A spec from one seen tensor: its shape, with -1 in dimension 0 when calls batch."""
    dims = list(shape)
    if batch and dims:
        dims[0] = -1
    return TensorSpec(name, datatype, dims)


def one_line(exc: BaseException | str) -> str:
    """An exception's message as one line: a traceback's last line, else the lines joined."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__ if isinstance(exc, BaseException) else "failed"
    if any(line.startswith(("Traceback", "File ")) for line in lines):
        text = lines[-1]
    else:
        text = " ".join(lines)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def call_failure(exc: Exception) -> Exception:
    """What a call answers when `predict` raised: a 400 stays a 400, anything else is a
    model failure (500); both one line."""
    if isinstance(exc, ProtocolError):
        text = one_line(exc)
        if text == str(exc):
            return exc
        return InputsDoNotFit(text) if isinstance(exc, InputsDoNotFit) else ProtocolError(text)
    return ModelError(one_line(exc))
