"""A Keras 3 model to a `.keras` file, for ``Client.push_keras``.

Saved with ``model.save`` (Keras's own zip of config and weights: no pickle) and served by
Keras on the torch backend, with ``safe_mode`` on. The signature is the model's: its inputs'
and outputs' names, datatypes and shapes (-1 where Keras says ``None``); outputs are named
by the keys of a model that answers a dict, else by the layer that makes each one, as the
serving process names them. A few rows of ``example`` are recorded with the version and
drive its warm-up. Needs ``pip install keras`` (any backend) on the pushing side.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import ModelplaneError
from contract.dtypes import FROM_NAME, NUMERIC_DTYPES
from contract.examples import encode_example

EXTRA = "pip install 'modelplane[keras]'"
EXAMPLE_ROWS = 8  # rows of the example recorded with the version


def save(model: Any, example: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``model`` to ``path`` (a ``.keras`` file): ``(signature, metadata)``, the
    metadata with the Keras version and backend and an example input."""
    try:
        import keras
    except ImportError as exc:
        raise ModelplaneError(f"push_keras needs keras ({EXTRA})") from exc
    if not isinstance(model, keras.Model):
        raise ModelplaneError(f"push_keras takes a keras.Model, not {type(model).__name__}")
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as exc:
        raise ModelplaneError(
            f"the model declares no inputs ({exc}): build it from keras.Input(shape=...) "
            "(a Sequential or functional model) before pushing"
        ) from None
    try:
        model.save(path)
    except Exception as exc:  # Keras raises ValueError, TypeError, NotImplementedError
        raise ModelplaneError(f"keras cannot save the model: {exc}") from exc
    structure = getattr(model, "_outputs_struct", None)
    names = [str(k) for k in structure] if isinstance(structure, Mapping) else _layer_names(outputs)
    signature = {
        "inputs": [_spec(t.name, t) for t in inputs],
        "outputs": [_spec(n, t) for n, t in zip(names, outputs, strict=False)],
    }
    metadata = {
        "keras": keras.__version__,
        "saved_with_backend": keras.backend.backend(),
        "serialised_by": "keras.Model.save",
        "example": encode_example(_example(example, signature["inputs"])),
    }
    return signature, metadata


def _example(example: Any, specs: list[dict[str, Any]]) -> dict[str, np.ndarray[Any, Any]]:
    """A few rows of the example by input name (an array, a list in input order, or a
    mapping), as arrays of the inputs' datatypes (float64 data for a float32 input)."""
    names = [s["name"] for s in specs]
    if isinstance(example, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in example.items()}
    elif isinstance(example, list | tuple) and len(names) > 1:
        arrays = dict(zip(names, (np.asarray(v) for v in example), strict=True))
    else:
        arrays = {names[0]: np.asarray(example)}
    if unknown := sorted(set(arrays) - set(names)):
        raise ModelplaneError(f"the example names {unknown}; the model takes {names}")
    dtypes = {s["name"]: NUMERIC_DTYPES[s["datatype"]] for s in specs}
    return {
        name: (array[:EXAMPLE_ROWS] if array.ndim else array).astype(dtypes[name], copy=False)
        for name, array in arrays.items()
    }


def _layer_names(tensors: list[Any]) -> list[str]:
    names: list[str] = []
    for tensor in tensors:
        history = getattr(tensor, "_keras_history", None)
        name = getattr(getattr(history, "operation", None), "name", None) or tensor.name
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def _spec(name: str, tensor: Any) -> dict[str, Any]:
    datatype = FROM_NAME.get(str(tensor.dtype))
    if datatype is None:
        raise ModelplaneError(f"{name!r} is {tensor.dtype}, which the v2 API cannot carry")
    return {
        "name": str(name),
        "datatype": datatype,
        "shape": [-1 if d is None else int(d) for d in tensor.shape],
    }
