"""A fitted scikit-learn estimator to an ONNX file, for ``Client.push_sklearn``.

Converted with skl2onnx and served by ONNX Runtime: no pickle is pushed or served, ever.
Classifiers are converted with ``zipmap`` off, so they answer two tensors: ``label`` (INT64,
or BYTES for string classes) and ``probabilities`` (FP32, one column per class). float64
examples become float32 (what skl2onnx's converters and ONNX Runtime's kernels take), so
answers match ``estimator.predict`` to float32 precision. Needs ``modelplane[sklearn]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from client.errors import ModelplaneError
from contract.examples import encode_example

EXTRA = "pip install 'modelplane[sklearn]'"
EXAMPLE_ROWS = 8  # rows of the example recorded with the version

# ONNX TensorProto element types -> v2 datatypes
ELEMENT_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


def example_array(example: Any) -> np.ndarray[Any, Any]:
    """Rows of features as the converted model takes them (float64 → float32)."""
    array = np.asarray(example)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


def convert(estimator: Any, example: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``estimator`` as ONNX to ``path``: ``(signature, metadata)``, the metadata with
    the versions that converted it and an example input (a few rows of ``example``)."""
    try:
        import skl2onnx
        import sklearn
        from sklearn.base import is_classifier
    except ImportError as exc:
        raise ModelplaneError(f"push_sklearn needs scikit-learn and skl2onnx ({EXTRA})") from exc
    rows = example_array(example)
    kind = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    # probabilities as a tensor, not ZipMap's list of dicts (a classifier without
    # probabilities, LinearSVC, has no such option: its scores are a tensor already)
    options = {"zipmap": False} if is_classifier(estimator) else None
    try:
        try:
            model = skl2onnx.to_onnx(estimator, rows[:1], options=options)
        except NameError as exc:  # "Option 'zipmap' not in [...]"
            if options is None or "zipmap" not in str(exc):
                raise
            model = skl2onnx.to_onnx(estimator, rows[:1])
    except Exception as exc:  # skl2onnx raises RuntimeError, MissingShapeCalculator, ...
        raise ModelplaneError(f"skl2onnx cannot convert {kind}: {exc}") from exc
    path.write_bytes(model.SerializeToString())
    signature = {
        "inputs": [_spec(v) for v in model.graph.input],
        "outputs": [_spec(v) for v in model.graph.output],
    }
    name = signature["inputs"][0]["name"]
    metadata = {
        "estimator": kind,
        "sklearn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "serialised_by": "skl2onnx",
        "example": encode_example({name: rows[:EXAMPLE_ROWS]}),
    }
    return signature, metadata


def _spec(value: Any) -> dict[str, Any]:
    tensor = value.type.tensor_type
    datatype = ELEMENT_TYPES.get(tensor.elem_type)
    if datatype is None:
        raise ModelplaneError(f"converted output {value.name!r} is not a tensor the v2 API carries")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return {"name": value.name, "datatype": datatype, "shape": dims}
