"""TensorFlow SavedModel (`format: tf_savedmodel`): the directory TF Serving serves
(`saved_model.pb`, `variables/variables.index` and `variables.data-*` shards, `assets/`),
pushed as is; a TF Serving base directory's numbered subdirectory (`1/saved_model.pb`) works
too. Served with `tensorflow-cpu` (`modelplane[tensorflow]`).

Calls run the `serving_default` signature, as TF Serving's do: input and output names,
datatypes and shapes come from it (`None` shows as -1; an output of unknown rank as the
warm-up call's), DT_STRING is BYTES both ways, and calls batch when every input's dimension
0 is `None`. A call TensorFlow rejects as an invalid argument (a reshape or an assertion on
the inputs inside the graph) is answered 400, any other failure 500, both in one line.

TensorFlow takes seconds to import: only `load` imports it, in the serving process that
serves this format. Before that the module quietens TensorFlow's C++ start-up log
(`TF_CPP_MIN_LOG_LEVEL=2`; oneDNN's banner with `TF_ENABLE_ONEDNN_OPTS=0`, which also keeps
answers bit-equal to TensorFlow's reference kernels) unless the environment already sets
them, and sizes TensorFlow's thread pools from the runtime options.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from contract.dtypes import FROM_NAME, NUMERIC_DTYPES
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
)

SIGNATURE = "serving_default"
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}

# TensorFlow dtypes (`tf.DType.name`) to v2 datatypes
DATATYPES: dict[str, str] = {**FROM_NAME, "string": "BYTES"}


def import_tensorflow(options: RuntimeOptions) -> Any:
    """TensorFlow, quiet, with its thread pools and devices set from `options` (both only
    take before TensorFlow's runtime starts: a second model in one process keeps them)."""
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # TensorFlow's runtime already started
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    if options.device is Device.cuda and not gpus:
        raise ArtifactError(
            "device cuda asked for, but TensorFlow sees no GPU (tensorflow-cpu has none: "
            "install tensorflow[and-cuda] instead)"
        )
    if options.device is Device.cpu and gpus:
        with contextlib.suppress(RuntimeError):
            tf.config.set_visible_devices([], "GPU")
    return tf


class TensorflowRuntime(Runtime):
    layouts: ClassVar[dict[str, Layout]] = {"tf_savedmodel": LAYOUTS[ModelFormat.tf_savedmodel]}

    def __init__(self, model_format: str, options: RuntimeOptions | None = None) -> None:
        super().__init__(model_format, options)
        self._tf: Any = None
        self._loaded: Any = None  # holds the variables the signature reads
        self._function: Any = None
        self._unranked: set[str] = set()  # outputs of unknown rank: shown as the warm-up's
        self._invalid: type[Exception] = Exception  # tf.errors.InvalidArgumentError
        self._failed: type[Exception] = Exception  # tf.errors.OpError

    @property
    def platform(self) -> str:
        return "tensorflow_savedmodel"

    def load(self, path: Path) -> None:
        tf = self._tf = import_tensorflow(self.options)
        self._invalid, self._failed = tf.errors.InvalidArgumentError, tf.errors.OpError
        graph, _ = self.locate(path)
        try:
            self._loaded = tf.saved_model.load(str(graph.parent))
        except Exception as exc:  # OpError, ValueError, protobuf DecodeError, ...
            raise ArtifactError(
                f"cannot load {graph.parent.name or graph.parent} as a SavedModel: {one_line(exc)}"
            ) from exc
        signatures = dict(getattr(self._loaded, "signatures", {}) or {})
        if SIGNATURE not in signatures:
            found = ", ".join(sorted(signatures)) or "none"
            raise ArtifactError(
                f"the SavedModel has no {SIGNATURE!r} signature (it has: {found}); save it "
                f"with tf.saved_model.save(model, dir, signatures={{'{SIGNATURE}': fn}})"
            )
        self._function = signatures[SIGNATURE]
        self.inputs = self._input_specs()
        outputs = self._output_specs()
        self.batchable = bool(self.inputs) and all(s.shape[:1] == [-1] for s in self.inputs)
        self.checked = True
        self.outputs = outputs
        self._warm_up()

    def _input_specs(self) -> list[TensorSpec]:
        args, kwargs = self._function.structured_input_signature
        if args:
            raise ArtifactError(
                f"the {SIGNATURE!r} signature takes positional inputs; TF Serving's needs "
                "named ones"
            )
        order = list(getattr(self._function, "_arg_keywords", None) or kwargs)
        return [_spec(name, kwargs[name]) for name in order if name in kwargs]

    def _output_specs(self) -> list[TensorSpec]:
        structured = self._function.structured_outputs
        if not isinstance(structured, dict):  # a v1 SavedModel's pruned function
            structured = {"output_0": structured}
        self._unranked = {
            name for name, s in structured.items() if getattr(s.shape, "rank", None) is None
        }
        return [_spec(str(name), s) for name, s in structured.items()]

    def _warm_up(self) -> None:
        """One call before the endpoint turns ready; outputs of unknown rank learn theirs."""
        self.learn_shapes(self.warm_up(self.predict), self._unranked)

    def predict(self, inputs: Inputs) -> Outputs:
        if self._function is None:
            raise ModelError("the model is unloaded")
        tf = self._tf
        try:
            feeds = {s.name: _to_tensor(tf, inputs[s.name], s.datatype) for s in self.inputs}
            results = self._function(**feeds)
        except self._invalid as exc:  # the graph refused these inputs
            raise InputsDoNotFit(_reason(exc)) from None
        except (TypeError, ValueError) as exc:  # the signature refused them before running
            raise InputsDoNotFit(one_line(exc)) from None
        except self._failed as exc:
            raise ModelError(_reason(exc)) from None
        if not isinstance(results, dict):
            results = {"output_0": results}
        return {str(name): _output(value) for name, value in results.items()}

    def unload(self) -> None:
        self._function = None
        self._loaded = None


def _spec(name: str, spec: Any) -> TensorSpec:
    datatype = DATATYPES.get(getattr(spec.dtype, "name", str(spec.dtype)))
    if datatype is None:
        raise ArtifactError(
            f"{name!r} of the {SIGNATURE!r} signature is {spec.dtype.name}, which the v2 "
            "protocol cannot carry"
        )
    dims = spec.shape.as_list() if spec.shape.rank is not None else [-1]
    return TensorSpec(name, datatype, [-1 if d is None else int(d) for d in dims])


def _to_tensor(tf: Any, array: np.ndarray[Any, Any], datatype: str) -> Any:
    if datatype == "BYTES":
        return tf.constant(array, dtype=tf.string)
    if datatype == "BF16":
        return tf.bitcast(tf.constant(array.view(np.uint16)), tf.bfloat16)
    return tf.convert_to_tensor(array)


def _output(value: Any) -> OutputTensor:
    dtype = value.dtype.name
    if dtype == "string":
        array = value.numpy()
        out = np.empty(array.shape, dtype=object)
        out.ravel()[:] = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return OutputTensor("BYTES", out)
    if dtype == "bfloat16":
        return OutputTensor("BF16", np.asarray(value.numpy()).view(np.uint16))
    datatype = DATATYPES.get(dtype)
    if datatype is None:
        raise TypeError(f"model output dtype {dtype} has no v2 datatype")
    array = value.numpy()
    return OutputTensor(datatype, array.astype(NUMERIC_DTYPES[datatype], copy=False))


def _reason(exc: Exception) -> str:
    """TensorFlow's message in one line: "node: what went wrong", without the "Graph
    execution error" frame, its stack-trace placeholder and the `[[{{node}}]] [Op:...]`
    suffixes."""
    text = str(getattr(exc, "message", None) or exc)
    text = text.split("\n\t [[{{node")[0].split(" [Op:")[0]
    node = re.search(r"Detected at node (\S+) defined at", text)
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "<stack traces"))
        and not line.lstrip().startswith("File ")
    ]
    body = " ".join(lines) or text.strip()
    return one_line(ValueError(f"{node.group(1)}: {body}" if node else body))
