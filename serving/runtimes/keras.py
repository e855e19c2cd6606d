"""Keras 3 (`format: keras`): one `.keras` file, loaded with Keras on the torch backend (no
TensorFlow needed) with `safe_mode` on: a file that would run Python code of its own when
loaded (a `Lambda` layer holding a lambda) is refused unless the deployment sets
`allow_pickle`, the same consent torch's pickled modules need.

Names, datatypes and shapes come from the model's inputs and outputs (`None` shows as -1);
calls batch when every input's dimension 0 is `None`. Inputs are named as the model's
`keras.Input`s are; outputs by the keys of a model that answers a dict, else by the layer
that makes each one (`Sequential`'s last layer). A `Sequential` built by `fit` without a
`keras.Input` records its first batch's size as a fixed dimension 0 (Keras's doing): it
then takes calls of exactly that many rows; start it with `keras.Input(shape=...)`.

Keras picks its backend once, when first imported: `load` sets `KERAS_BACKEND=torch` (and
the torch device) before importing it, so this module's top stays free of heavy imports.
One call uses `intra_op_threads` torch threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from contract.dtypes import FROM_NAME
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
    one_line,
    spec_of,
)

BACKEND = "torch"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
UNSAFE = "safe_mode"  # in Keras's message when it refuses to deserialise code


def import_keras(options: RuntimeOptions) -> Any:
    """Keras on the torch backend, on the options' device; raises when Keras was already
    imported in this process with another backend (it cannot switch)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = BACKEND
        if options.device is Device.cpu:
            os.environ["KERAS_TORCH_DEVICE"] = "cpu"
        elif options.device is Device.cuda:
            os.environ["KERAS_TORCH_DEVICE"] = "cuda"
    import keras

    if keras.backend.backend() != BACKEND:
        raise ArtifactError(
            f"keras runs on the {keras.backend.backend()} backend in this process; "
            f"serving needs KERAS_BACKEND={BACKEND} before keras is first imported"
        )
    return keras


class KerasRuntime(Runtime):
    layouts: ClassVar[dict[str, Layout]] = {"keras": LAYOUTS[ModelFormat.keras]}

    def __init__(self, model_format: str, options: RuntimeOptions | None = None) -> None:
        super().__init__(model_format, options)
        self._model: Any = None
        self._torch: Any = None
        self._device: Any = None
        self._takes_dict = False  # the model's inputs are a dict (else a list, or one)
        self._output_names: list[str] = []  # by position, for models answering a list

    @property
    def platform(self) -> str:
        return "keras_torch"

    def load(self, path: Path) -> None:
        keras = import_keras(self.options)
        import torch

        self._torch = torch
        torch.set_num_threads(self.options.intra_op_threads)
        with contextlib.suppress(RuntimeError):  # once per process, before inter-op work
            torch.set_num_interop_threads(self.options.inter_op_threads)
        self._device = torch.device(_keras_device(torch))
        graph, _ = self.locate(path)
        self._model = self._load_model(keras, graph)
        self.inputs = self._input_specs()
        self.batchable = bool(self.inputs) and all(s.shape[:1] == [-1] for s in self.inputs)
        self.checked = True
        self._warm_up()

    def _load_model(self, keras: Any, graph: Path) -> Any:
        safe = not self.options.allow_pickle
        try:
            return keras.saving.load_model(graph, compile=False, safe_mode=safe)
        except Exception as exc:  # ValueError, TypeError, zipfile errors, missing classes
            reason = _reason(exc)
            if safe and UNSAFE in str(exc):
                what = reason.split(". ")[0]
                raise ArtifactError(
                    f"{graph.name} holds Python code that runs when loaded ({what}): deploy "
                    "it with allow_pickle only if you trust it, or rebuild the model from "
                    "built-in layers"
                ) from None
            raise ArtifactError(f"cannot load {graph.name} as keras: {reason}") from exc

    def _input_specs(self) -> list[TensorSpec]:
        try:
            tensors = list(self._model.inputs)
        except (AttributeError, ValueError) as exc:  # a subclassed model never built
            raise ArtifactError(
                f"the model declares no inputs ({one_line(exc)}): save a functional or "
                "Sequential model that starts with keras.Input(shape=...)"
            ) from None
        if not tensors:
            raise ArtifactError("the model declares no inputs: start it with keras.Input(...)")
        self._takes_dict = isinstance(getattr(self._model, "_inputs_struct", None), dict)
        return [_spec(t.name, t.dtype, t.shape) for t in tensors]

    def _warm_up(self) -> None:
        """One call (on the recorded example, else zeros): proves the model runs and shows
        its outputs' datatypes, shapes from the model where it declares them."""
        self._output_names = _layer_names(self._model)
        results = self.warm_up(self._run, reason=_reason)
        declared = _declared_shapes(self._model)
        self.outputs = [
            TensorSpec(name, tensor.datatype, declared[name])
            if name in declared and len(declared[name]) == tensor.data.ndim
            else spec_of(name, tensor.datatype, tensor.data.shape, self.batchable)
            for name, tensor in results.items()
        ]

    def predict(self, inputs: Inputs) -> Outputs:
        try:
            return self._run(inputs)
        except ValueError as exc:  # Keras's input checks: "is incompatible with the layer"
            if "incompatible" in str(exc):
                raise InputsDoNotFit(_reason(exc)) from None
            raise ModelError(_reason(exc)) from None
        except Exception as exc:
            raise ModelError(_reason(exc)) from None

    def _run(self, inputs: Inputs) -> Outputs:
        if self._model is None:
            raise ModelError("the model is unloaded")
        torch = self._torch
        tensors = {s.name: _to_torch(torch, inputs[s.name], s.datatype, self._device)
                   for s in self.inputs}  # fmt: skip
        if self._takes_dict:
            args: Any = tensors
        elif len(tensors) == 1:
            [args] = tensors.values()
        else:
            args = list(tensors.values())
        with torch.no_grad():
            result = self._model(args, training=False)
        return self._named(result)

    def _named(self, result: Any) -> Outputs:
        if isinstance(result, dict):
            return {str(k): _output(v) for k, v in result.items()}
        values = list(result) if isinstance(result, list | tuple) else [result]
        names = self._output_names
        if len(names) != len(values):
            names = [f"output{i}" for i in range(len(values))]
        return {name: _output(v) for name, v in zip(names, values, strict=True)}

    def unload(self) -> None:
        self._model = None
        if self._device is not None and self._device.type == "cuda":
            self._torch.cuda.empty_cache()


def _keras_device(torch: Any) -> str:
    """The device Keras put its variables on (it picked one when first imported)."""
    try:
        from keras.src.backend.torch.core import get_device
    except ImportError:  # Keras moved it: its own rule
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(get_device())


def _spec(name: str, dtype: Any, shape: Any) -> TensorSpec:
    datatype = FROM_NAME.get(str(dtype))
    if datatype is None:
        raise ArtifactError(f"input {name!r} is {dtype}, which the torch backend cannot serve")
    return TensorSpec(str(name), datatype, [-1 if d is None else int(d) for d in shape])


def _layer_names(model: Any) -> list[str]:
    """Each output's name by position: the layer that makes it, made unique."""
    try:
        tensors = list(model.outputs)
    except (AttributeError, ValueError):
        return []
    names: list[str] = []
    for tensor in tensors:
        history = getattr(tensor, "_keras_history", None)
        name = getattr(getattr(history, "operation", None), "name", None) or tensor.name
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def _declared_shapes(model: Any) -> dict[str, list[int]]:
    """Output shapes as the model declares them, by the names outputs answer under."""
    structure = getattr(model, "_outputs_struct", None)
    try:
        tensors = list(model.outputs)
    except (AttributeError, ValueError):
        return {}
    if isinstance(structure, dict):
        pairs = [(str(k), v.shape) for k, v in structure.items()]
    else:
        pairs = list(zip(_layer_names(model), [t.shape for t in tensors], strict=False))
    return {name: [-1 if d is None else int(d) for d in shape] for name, shape in pairs}


def _to_torch(torch: Any, array: np.ndarray[Any, Any], datatype: str, device: Any) -> Any:
    tensor = torch.from_numpy(array)
    if datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)


def _output(value: Any) -> OutputTensor:
    torch = sys.modules["torch"]
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(np.asarray(value))
    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    if value.dtype == torch.bfloat16:
        return OutputTensor("BF16", value.view(torch.int16).numpy().view(np.uint16))
    datatype = FROM_NAME.get(str(value.dtype).removeprefix("torch."))
    if datatype is None:
        raise TypeError(f"model output dtype {value.dtype} has no v2 datatype")
    return OutputTensor(datatype, value.numpy())


def _reason(exc: BaseException) -> str:
    """Keras's message in one line: without colours, and without its "Exception
    encountered when calling X.call()" frame and the arguments it lists."""
    text = ANSI.sub("", str(exc)).strip()
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) >= 2 and paragraphs[0].startswith("Exception encountered when calling"):
        layer = paragraphs[0].removeprefix("Exception encountered when calling").strip(" .:")
        text = f"{layer.removesuffix('.call()')}: {paragraphs[1]}"
    return one_line(ValueError(text))
