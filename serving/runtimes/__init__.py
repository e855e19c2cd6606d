"""Runtimes by format. `runtime_for(format)` finds the class through the `modelplane.runtimes`
entry points (pyproject.toml: where a third party's runtime joins), falling back to the
built-in table when this package runs from a source tree without installed metadata. Only
the one runtime's module is imported, with its framework.
"""

from __future__ import annotations

from importlib import import_module

from contract.formats import UnknownFormat, known_formats, runtime_entry_points
from serving.artifacts import ArtifactError
from serving.runtimes.base import Runtime, RuntimeOptions

# format -> "module:Class"; the entry points of pyproject.toml say the same (a test holds them)
BUILTIN: dict[str, str] = {
    "torchscript": "serving.runtimes.torch:TorchRuntime",
    "torch_export": "serving.runtimes.torch:TorchRuntime",
    "safetensors": "serving.runtimes.torch:TorchRuntime",
    "pickle": "serving.runtimes.torch:TorchRuntime",
    "onnx": "serving.runtimes.onnx:OnnxRuntime",
    "keras": "serving.runtimes.keras:KerasRuntime",
    "tf_savedmodel": "serving.runtimes.tensorflow:TensorflowRuntime",
    "hf_causal_lm": "serving.runtimes.hf:HfCausalLmRuntime",
    "hf_embedding": "serving.runtimes.hf:HfEmbeddingRuntime",
}

# formats the table knows whose runtime ships as an extra of its own
EXTRAS = {
    "onnx": "onnx",
    "keras": "keras",
    "tf_savedmodel": "tensorflow",
    "hf_causal_lm": "llm",
    "hf_embedding": "llm",
}


def runtime_for(model_format: str) -> type[Runtime]:
    """The runtime class serving `model_format`; `ArtifactError` when none is installed."""
    fmt = str(model_format)
    entry = runtime_entry_points().get(fmt)
    target = entry.value if entry is not None else BUILTIN.get(fmt)
    if target is None:
        if fmt not in known_formats():
            raise ArtifactError(str(UnknownFormat(fmt, known_formats())))
        extra = EXTRAS.get(fmt)
        hint = f": pip install 'modelplane[{extra}]'" if extra else ""
        raise ArtifactError(f"no runtime for format {fmt} is installed{hint}")
    module_name, _, attribute = target.partition(":")
    try:
        runtime = getattr(import_module(module_name), attribute)
    except ImportError as exc:
        extra = EXTRAS.get(fmt)
        hint = f" (pip install 'modelplane[{extra}]')" if extra else ""
        raise ArtifactError(f"the runtime for format {fmt} cannot load: {exc}{hint}") from exc
    if not (isinstance(runtime, type) and issubclass(runtime, Runtime)):
        raise ArtifactError(f"{target} (format {fmt}) is not a serving.runtimes.base.Runtime")
    return runtime


__all__ = ["BUILTIN", "Runtime", "RuntimeOptions", "runtime_for"]
