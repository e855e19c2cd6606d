"""PyTorch: TorchScript, `torch.export` programs, safetensors weights poured into one of those
graphs, and (only when explicitly allowed) pickled whole modules.

Names, datatypes and shapes come from the signature when given, else from the graph (export
placeholders; TorchScript argument names) plus one warm-up call. TorchScript keeps no tensor
dtypes or shapes: without a signature its inputs are not checked (calls pass through as
sent), the version's recorded example input (if any) shows them and drives the warm-up that
learns the outputs; without an example the outputs are learned on the first call that
succeeds. A call such a model refuses is answered 400 naming the input, what was sent and
what the model ran on before, in one line.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils._pytree import tree_map

from contract.dtypes import FROM_NUMPY, torch_datatype
from contract.enums import Device, ModelFormat
from contract.formats import LAYOUTS, Layout
from serving.artifacts import ArtifactError
from serving.protocol import OutputTensor, TensorSpec
from serving.runtimes.base import (
    Inputs,
    InputsDoNotFit,
    ModelError,
    Outputs,
    Runtime,
    RuntimeOptions,
    manifest,
    one_line,
    spec_of,
)

# Binary inputs are read-only views of the request body; models do not write their inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
warnings.filterwarnings("ignore", message="The given buffer is not writable")

FORMATS = (
    ModelFormat.torchscript,
    ModelFormat.torch_export,
    ModelFormat.safetensors,
    ModelFormat.pickle,
)
Seen = dict[str, tuple[str, tuple[int, ...]]]  # input -> (dtype, shape past dimension 0)


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


def _set_threads(options: RuntimeOptions) -> None:
    torch.set_num_threads(options.intra_op_threads)
    # allowed once, before any inter-op work: a second runtime in a process keeps the first's
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(options.inter_op_threads)


class TorchRuntime(Runtime):
    layouts: ClassVar[dict[str, Layout]] = {f.value: LAYOUTS[f] for f in FORMATS}

    def __init__(self, model_format: str, options: RuntimeOptions | None = None) -> None:
        super().__init__(model_format, options)
        self.torch_format = ModelFormat(model_format)
        self.device = pick_device(self.options.device)
        self.signature = self.options.signature
        self.allow_pickle = self.options.allow_pickle
        self.learning = False  # outputs unknown until a call succeeds (TorchScript, no example)
        self._module: Any = None
        self._ranges: dict[Any, Any] = {}  # torch.export: symbol → its allowed range
        self._seen: Seen = {}  # unchecked inputs: what the model ran on
        self.precision = "none"  # fp16/bf16: set by serving.optimize; float inputs cast
        _set_threads(self.options)

    @property
    def platform(self) -> str:
        return f"pytorch_{self.torch_format.value}"

    def load(self, path: Path) -> None:
        self._module, graph_format = self._load_module(path)
        if graph_format is not ModelFormat.torch_export:  # export modules refuse eval()
            self._module.eval()
        inferred = self._infer_inputs(graph_format)
        self.inputs = self.signature.inputs or inferred
        self.checked = bool(self.signature.inputs) or graph_format is not ModelFormat.torchscript
        self.batchable = all(s.shape[:1] == [-1] and s.datatype != "BYTES" for s in self.inputs)
        self.outputs = list(self.signature.outputs)
        example = self.example()
        if self.checked:
            self._warm_up(example)
        elif example is not None:
            self._warm_up_unchecked(example)
        else:
            self.learning = True

    def _load_module(self, path: Path) -> tuple[Any, ModelFormat]:
        graph, _ = self.locate(path)
        if self.torch_format is ModelFormat.safetensors:
            return self._load_with_weights(graph, path)
        if self.torch_format is ModelFormat.pickle:
            if not self.allow_pickle:
                raise PickleRefused(graph)
            module = torch.load(graph, map_location=self.device, weights_only=False)
            return module, self.torch_format
        return self._load_graph(graph, self.torch_format), self.torch_format

    def _load_graph(self, path: Path, graph_format: ModelFormat) -> Any:
        try:
            if graph_format is ModelFormat.torch_export:
                program = torch.export.load(path)
                self._ranges = dict(program.range_constraints)
                return program.module().to(self.device)
            return torch.jit.load(path, map_location=self.device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors, ...
            raise ArtifactError(
                f"cannot load {path} as {graph_format.value}: {one_line(exc)}"
            ) from exc

    def _load_with_weights(self, graph: Path, directory: Path) -> tuple[Any, ModelFormat]:
        from safetensors.torch import load_file

        graph_format = (
            ModelFormat.torch_export if graph.suffix == ".pt2" else ModelFormat.torchscript
        )
        module = self._load_graph(graph, graph_format)
        state: dict[str, torch.Tensor] = {}
        for relpath, _ in manifest(directory):
            if relpath.endswith(".safetensors"):
                state.update(load_file(directory / relpath, device=str(self.device)))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"weights do not fit {graph.name}: {one_line(exc)}") from exc
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

    def _warm_up(self, example: Inputs | None) -> None:
        """One call (on the recorded example, else zeros): proves the model runs and shows
        the outputs' shapes."""
        self._learn_outputs(self.warm_up(self._run, example))

    def _warm_up_unchecked(self, example: Inputs) -> None:
        """TorchScript without a signature: the example shows the inputs' datatypes and
        shapes, and its call the outputs'."""
        if missing := [s.name for s in self.inputs if s.name not in example]:
            raise ArtifactError(f"the example input has no {missing}; the model takes them")
        arrays = {s.name: example[s.name] for s in self.inputs}
        try:
            results = self._run(arrays)
        except Exception as exc:
            raise ArtifactError(
                f"the warm-up call on the version's example failed: {one_line(exc)}"
            ) from exc
        self.inputs = [
            spec_of(s.name, _datatype(arrays[s.name]), arrays[s.name].shape, self.batchable)
            for s in self.inputs
        ]
        self._seen = _seen(arrays)
        self._learn_outputs(results)

    def _learn_outputs(self, results: list[tuple[str, OutputTensor]]) -> None:
        names = [s.name for s in self.outputs]
        self.outputs = [
            spec_of(
                names[i] if i < len(names) else name,
                tensor.datatype,
                tensor.data.shape if tensor.data.ndim else (),
                self.batchable,
            )
            for i, (name, tensor) in enumerate(results)
        ]

    def predict(self, inputs: Inputs) -> Outputs:
        try:
            results = self._run(inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            if self.checked:
                raise ModelError(one_line(exc)) from None
            raise self._refused(inputs, exc) from None
        if not self.checked and not self._seen:
            self._seen = _seen(inputs)
        if self.learning:  # the first call that succeeds shows the outputs from now on
            self._learn_outputs(results)
            self.learning = False
        names = [s.name for s in self.outputs]
        return {
            names[i] if i < len(names) else name: tensor for i, (name, tensor) in enumerate(results)
        }

    def _refused(self, inputs: Inputs, exc: Exception) -> Exception:
        """A model without a signature failed: the inputs most likely do not fit it (400,
        naming what differs from what it ran on); the same kinds of inputs as a call that
        worked mean the model itself failed (500)."""
        reason = one_line(exc)
        if not self._seen:
            sent = ", ".join(f"{n!r} {_described(a)}" for n, a in inputs.items())
            return InputsDoNotFit(
                f"the model failed on input {sent} (it has no signature, so its inputs are "
                f"unknown): {reason}"
            )
        differ = [n for n, a in inputs.items() if self._seen.get(n) != (a.dtype.str, a.shape[1:])]
        if not differ:
            return ModelError(reason)
        name = differ[0]
        if name not in self._seen:
            return InputsDoNotFit(f"input {name!r}: the model takes {sorted(self._seen)}")
        dtype, rest = self._seen[name]
        ran = f"{_v2(np.dtype(dtype))} {[-1, *rest]}"
        return InputsDoNotFit(
            f"input {name!r}: {_described(inputs[name])} does not fit the model, which ran on "
            f"{ran}: {reason}"
        )

    def _run(self, inputs: Inputs) -> list[tuple[str, OutputTensor]]:
        specs = self.inputs or [TensorSpec(n, "FP32", [-1]) for n in inputs]
        args = [_to_torch(inputs[s.name], s.datatype, self.device) for s in specs]
        if self.precision in HALF:
            args = [a.to(HALF[self.precision]) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            result = self._module(*args)
        if self.precision in HALF:  # answered as float32, as the signature says
            result = tree_map(lambda v: v.float() if _is_half(v) else v, result)
        return _flatten_outputs(result)

    def unload(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _is_half(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16)


def _seen(inputs: Inputs) -> Seen:
    return {name: (array.dtype.str, array.shape[1:]) for name, array in inputs.items()}


def _datatype(array: np.ndarray[Any, Any]) -> str:
    return "BYTES" if array.dtype == object else _v2(array.dtype)


def _v2(dtype: np.dtype[Any]) -> str:
    return "BYTES" if dtype.kind == "O" else FROM_NUMPY.get(dtype.newbyteorder("="), str(dtype))


def _described(array: np.ndarray[Any, Any]) -> str:
    return f"{_datatype(array)} {list(array.shape)}"


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
