"""Runtimes: what turns artifact files into something that answers `predict`.

`Runtime` is the extension point (an ONNX or TensorRT runtime would implement it too);
`TorchRuntime` serves TorchScript, `torch.export` programs, safetensors weights poured into
one of those graphs, and (only when explicitly allowed) pickled whole modules.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from contract.dtypes import torch_datatype
from serving.artifacts import ArtifactError, Signature, find_graph_file
from serving.protocol import OutputTensor, TensorSpec
from serving.settings import Device, ModelFormat

# Binary inputs are read-only views of the request body; models do not write their inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
warnings.filterwarnings("ignore", message="The given buffer is not writable")


class Runtime(Protocol):
    """How a serving process runs one model. For implementers:

    - `load(artifact_dir)` reads the artifact (a file, or a directory of files) and gets
      ready to answer; it raises on any failure, with a message an operator can act on.
      It is called once, on a background thread, before the endpoint turns ready.
    - After `load`, `inputs` and `outputs` describe the tensors (shapes use -1 for any
      size), and `batchable` says whether calls may be stacked along dimension 0.
      `checked` is False when `inputs` are guesses (then calls are passed through as sent,
      and no warm-up call is made); `max_batch` is the largest dimension 0 the model
      accepts (None: no limit known); `platform` is shown in model metadata.
    - `predict(inputs)` gets one numpy array per input name, already checked against
      `inputs` (BF16 as `uint16` bit patterns, BYTES as object arrays of `bytes`), and
      returns every output by name. It is only ever called from the one inference thread,
      so it need not be thread-safe; it raises on failure (the call answers 500).
    - `unload()` frees what `load` took; the process may exit right after.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batchable: bool
    checked: bool
    max_batch: int | None

    @property
    def platform(self) -> str: ...

    def load(self, artifact_dir: Path) -> None: ...

    def predict(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, OutputTensor]: ...

    def unload(self) -> None: ...


class PickleRefused(ArtifactError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is a pickled module, which runs code when loaded; "
            "start with --allow-pickle only if you trust it"
        )


def pick_device(device: Device) -> torch.device:
    if device is Device.cuda or (device is Device.auto and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class TorchRuntime:
    """PyTorch models. Names, datatypes and shapes come from the signature when given,
    else from the graph (export placeholders; TorchScript argument names) plus one warm-up
    call. TorchScript keeps no tensor dtypes or shapes, so without a signature its tensor
    inputs are shown as FP32 of any shape and whatever the client sends is passed through.
    """

    def __init__(
        self,
        model_format: ModelFormat,
        *,
        device: Device = Device.auto,
        signature: Signature | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self.format = model_format
        self.device = pick_device(device)
        self.signature = signature or Signature()
        self.allow_pickle = allow_pickle
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.batchable = False
        self.checked = True  # False: the input specs are guesses, not to be enforced
        self.max_batch: int | None = None
        self._module: Any = None
        self._ranges: dict[Any, Any] = {}  # torch.export: symbol → its allowed range

    @property
    def platform(self) -> str:
        return f"pytorch_{self.format.value}"

    def load(self, artifact_dir: Path) -> None:
        self._module, graph_format = self._load_module(artifact_dir)
        if graph_format is not ModelFormat.torch_export:  # export modules refuse eval()
            self._module.eval()
        inferred = self._infer_inputs(graph_format)
        self.inputs = self.signature.inputs or inferred
        self.checked = bool(self.signature.inputs) or graph_format is not ModelFormat.torchscript
        self.batchable = all(s.shape[:1] == [-1] and s.datatype != "BYTES" for s in self.inputs)
        self.outputs = list(self.signature.outputs)
        if self.checked:
            self._warm_up()

    def _load_module(self, path: Path) -> tuple[Any, ModelFormat]:
        if not path.exists():
            raise ArtifactError(f"{path} does not exist")
        if self.format is ModelFormat.safetensors:
            return self._load_with_weights(path)
        if path.is_dir():
            path = find_graph_file(path)
        if self.format is ModelFormat.pickle:
            if not self.allow_pickle:
                raise PickleRefused(path)
            return torch.load(path, map_location=self.device, weights_only=False), self.format
        return self._load_graph(path, self.format), self.format

    def _load_graph(self, path: Path, graph_format: ModelFormat) -> Any:
        try:
            if graph_format is ModelFormat.torch_export:
                program = torch.export.load(path)
                self._ranges = dict(program.range_constraints)
                return program.module().to(self.device)
            return torch.jit.load(path, map_location=self.device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors, ...
            raise ArtifactError(f"cannot load {path} as {graph_format.value}: {exc}") from exc

    def _load_with_weights(self, directory: Path) -> tuple[Any, ModelFormat]:
        from safetensors.torch import load_file

        if not directory.is_dir():
            raise ArtifactError(f"safetensors needs a directory (graph + weights), got {directory}")
        graph = find_graph_file(directory)
        graph_format = (
            ModelFormat.torch_export if graph.suffix == ".pt2" else ModelFormat.torchscript
        )
        module = self._load_graph(graph, graph_format)
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(directory.glob("*.safetensors")):
            state.update(load_file(shard, device=str(self.device)))
        if not state:
            raise ArtifactError(f"no .safetensors weights in {directory}")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"weights do not fit {graph.name}: {exc}") from exc
        return module, graph_format

    def _infer_inputs(self, graph_format: ModelFormat) -> list[TensorSpec]:
        if graph_format is ModelFormat.torch_export:
            nodes = [n for n in self._module.graph.nodes if n.op == "placeholder"]
            # Placeholders get renamed (`input` → `input_1`); forward keeps the user's names.
            names = list(inspect.signature(self._module.forward).parameters)
            if len(names) != len(nodes):
                names = [n.name for n in nodes]
            values = [n.meta.get("val") for n in nodes]
            self.max_batch = _batch_limit(values, self._ranges)
            return [_spec_from_fake(name, v) for name, v in zip(names, values, strict=True)]
        schema = getattr(getattr(self._module, "forward", None), "schema", None)
        if schema is None:
            return []
        return [
            TensorSpec(a.name, "BYTES" if "str" in str(a.type) else "FP32", [-1])
            for a in schema.arguments[1:]
        ]

    def _warm_up(self) -> None:
        """One call on zeros: proves the model runs and shows the outputs' shapes."""
        example = {s.name: example_input(s) for s in self.inputs}
        results = list(self._run(example))
        names = [s.name for s in self.outputs]
        self.outputs = [
            TensorSpec(
                names[i] if i < len(names) else name,
                tensor.datatype,
                ([-1] if self.batchable else [tensor.data.shape[0]]) + list(tensor.data.shape[1:])
                if tensor.data.ndim
                else [],
            )
            for i, (name, tensor) in enumerate(results)
        ]

    def predict(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, OutputTensor]:
        results = self._run(inputs)
        names = [s.name for s in self.outputs]
        return {
            names[i] if i < len(names) else name: tensor for i, (name, tensor) in enumerate(results)
        }

    def _run(self, inputs: dict[str, np.ndarray[Any, Any]]) -> list[tuple[str, OutputTensor]]:
        specs = self.inputs or [TensorSpec(n, "FP32", [-1]) for n in inputs]
        args = [_to_torch(inputs[s.name], s.datatype, self.device) for s in specs]
        with torch.inference_mode():
            result = self._module(*args)
        return _flatten_outputs(result)

    def unload(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _batch_limit(values: list[Any], ranges: dict[Any, Any]) -> int | None:
    """The tightest finite upper bound export put on any input's dimension 0."""
    limits: list[int] = []
    for value in values:
        dim = value.shape[0] if isinstance(value, torch.Tensor) and value.ndim else None
        bound = ranges.get(dim.node.expr) if isinstance(dim, torch.SymInt) else None
        if bound is not None and bound.upper.is_finite:
            limits.append(int(bound.upper))
    return min(limits, default=None)


def _spec_from_fake(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise ArtifactError(f"export input {name!r} is not a tensor; give a --signature")
    shape = [d if isinstance(d, int) else -1 for d in value.shape]
    return TensorSpec(name, torch_datatype(value.dtype) or "FP32", shape)


def example_input(spec: TensorSpec) -> np.ndarray[Any, Any]:
    from serving.protocol import NUMERIC_DTYPES

    shape = [1 if d == -1 else d for d in spec.shape]
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.fill(b"warm-up")
        return array
    return np.zeros(shape, dtype=NUMERIC_DTYPES[spec.datatype])


def _to_torch(array: np.ndarray[Any, Any], datatype: str, device: torch.device) -> Any:
    if datatype == "BYTES" or array.dtype == object:
        return [b.decode("utf-8", "replace") for b in array.ravel()]
    tensor = torch.from_numpy(array)
    if datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)


def _flatten_outputs(result: Any) -> list[tuple[str, OutputTensor]]:
    if isinstance(result, dict):
        return [(str(k), _to_output(v)) for k, v in result.items()]
    if isinstance(result, torch.Tensor) or _is_strings(result):
        return [("output0", _to_output(result))]
    if isinstance(result, list | tuple):
        return [(f"output{i}", _to_output(v)) for i, v in enumerate(result)]
    raise TypeError(f"model returned {type(result).__name__}; expected tensors")


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value) and bool(value)


def _to_output(value: Any) -> OutputTensor:
    if _is_strings(value):
        array = np.empty(len(value), dtype=object)
        array[:] = [v.encode() for v in value]
        return OutputTensor("BYTES", array)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"model output is {type(value).__name__}; expected a tensor")
    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    if value.dtype == torch.bfloat16:
        return OutputTensor("BF16", value.view(torch.int16).numpy().view(np.uint16))
    datatype = torch_datatype(value.dtype)
    if datatype is None:
        raise TypeError(f"model output dtype {value.dtype} has no v2 datatype")
    return OutputTensor(datatype, value.numpy())
