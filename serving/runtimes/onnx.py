"""ONNX Runtime (`format: onnx`): models exported from PyTorch, converted from scikit-learn
(skl2onnx) or TensorFlow (tf2onnx), and any other `.onnx` file.

Names, datatypes and shapes come from the graph: a symbolic dimension (`batch`, or none at
all) shows as -1, and calls batch when every input's dimension 0 is symbolic. A model over
2 GiB keeps its weights in external data files beside the `.onnx`: the version is then the
directory of them all, and ONNX Runtime reads them relative to the graph. The CPU execution
provider always; CUDA's too when a GPU is wanted and `onnxruntime-gpu` offers it. One call
uses `intra_op_threads` threads (the serving process's `--torch-threads`). onnxruntime is
imported by `load`, so reading this module's `layouts` costs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

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
    one_line,
)

# ONNX tensor element types, as onnxruntime names them, to v2 datatypes
DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_SOURCE = re.compile(r"/onnxruntime_src/\S+ .*? was false\. ?")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OnnxRuntime(Runtime):
    layouts: ClassVar[dict[str, Layout]] = {"onnx": LAYOUTS[ModelFormat.onnx]}

    def __init__(self, model_format: str, options: Any = None) -> None:
        super().__init__(model_format, options)
        self.providers: list[str] = []
        self._session: Any = None
        self._output_names: list[str] = []
        self._strings: set[str] = set()  # BYTES inputs: onnxruntime wants str objects
        self._unranked: set[str] = set()  # outputs of unknown rank: shown as the warm-up's
        self._invalid: type[Exception] = Exception  # onnxruntime's InvalidArgument

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx"

    def load(self, path: Path) -> None:
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        self._invalid = InvalidArgument
        graph, _ = self.locate(path)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self.options.intra_op_threads
        session_options.inter_op_num_threads = self.options.inter_op_threads
        session_options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if self.options.inter_op_threads > 1
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 4  # a failed call is answered and logged by us
        self.providers = self._providers(ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(
                str(graph), sess_options=session_options, providers=self.providers
            )
        except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NoSuchFile, ...
            raise ArtifactError(f"cannot load {graph.name} as onnx: {one_line(exc)}") from exc
        self.inputs = [self._spec(arg) for arg in self._session.get_inputs()]
        outputs = [self._spec(arg) for arg in self._session.get_outputs()]
        self._unranked = {
            a.name for a in self._session.get_outputs() if not isinstance(a.shape, list)
        }
        self._output_names = [s.name for s in outputs]
        self._strings = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self.batchable = bool(self.inputs) and all(s.shape[:1] == [-1] for s in self.inputs)
        self.checked = True
        self.outputs = self._named(outputs)
        self._warm_up()

    def _providers(self, available: list[str]) -> list[str]:
        device = self.options.device
        if device is Device.cuda and CUDA not in available:
            raise ArtifactError(
                "device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu instead of onnxruntime)"
            )
        if device is not Device.cpu and CUDA in available and _has_gpu():
            return [CUDA, CPU]
        return [CPU]

    def _spec(self, arg: Any) -> TensorSpec:
        datatype = DATATYPES.get(arg.type)
        if datatype is None:
            raise ArtifactError(
                f"{arg.name!r} is {arg.type}, which the v2 protocol cannot carry "
                "(sequences and maps: convert scikit-learn classifiers with "
                "options={'zipmap': False})"
            )
        shape = arg.shape if isinstance(arg.shape, list) else [-1]
        return TensorSpec(
            arg.name, datatype, [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
        )

    def _named(self, outputs: list[TensorSpec]) -> list[TensorSpec]:
        """The graph's outputs, shapes filled in from a declared signature where unknown."""
        declared = {s.name: s for s in self.options.signature.outputs}
        return [
            TensorSpec(s.name, s.datatype, declared[s.name].shape)
            if s.name in declared and -1 in s.shape and len(declared[s.name].shape) == len(s.shape)
            else s
            for s in outputs
        ]

    def _warm_up(self) -> None:
        """One call before the endpoint turns ready; outputs of unknown rank learn theirs."""
        self.learn_shapes(self.warm_up(self.predict), self._unranked)

    def predict(self, inputs: Inputs) -> Outputs:
        feeds = {
            name: _decoded(array) if name in self._strings else array
            for name, array in inputs.items()
        }
        try:
            results = self._session.run(self._output_names, feeds)
        except self._invalid as exc:  # the inputs do not fit the graph
            raise InputsDoNotFit(_reason(exc)) from None
        except Exception as exc:  # Fail, RuntimeException: the model failed on this call
            raise ModelError(_reason(exc)) from None
        return {
            spec.name: _output(spec, value)
            for spec, value in zip(self.outputs, results, strict=True)
        }

    def unload(self) -> None:
        self._session = None


def _decoded(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.empty(array.shape, dtype=object)
    out.ravel()[:] = [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()
    ]
    return out


def _output(spec: TensorSpec, value: Any) -> OutputTensor:
    array = np.asarray(value)
    if spec.datatype == "BYTES" or array.dtype == object:
        out = np.empty(array.shape, dtype=object)
        out.ravel()[:] = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return OutputTensor("BYTES", out)
    return OutputTensor(spec.datatype, array)


def _reason(exc: Exception) -> str:
    """onnxruntime's message without its `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :` prefix
    and its closing advice, in one line."""
    text = _SOURCE.sub("", str(exc))  # where in onnxruntime's C++ it was checked
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return one_line(text.replace("Please fix either the inputs/outputs or the model.", ""))


def _has_gpu() -> bool:
    """A CUDA device is there (the provider alone says only that the library was built
    with it): the driver's device nodes, read without importing any CUDA library."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()
