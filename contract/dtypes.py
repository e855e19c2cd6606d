"""The Open Inference Protocol (v2) datatypes: numpy's and torch's names for each.

BF16 has no numpy dtype, so it travels as its raw 16-bit pattern (``uint16``) until the
runtime reinterprets it. Torch dtypes are named by their string (``float32`` for
``torch.float32``), so this module needs no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
}
DATATYPES = frozenset(NUMERIC_DTYPES) | {"BYTES"}

# numpy dtype -> v2 datatype (BF16 has none of its own)
FROM_NUMPY: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in NUMERIC_DTYPES.items() if name != "BF16"
}

# a framework's dtype name -> v2 datatype: torch's (``str(dtype).removeprefix("torch.")``),
# TensorFlow's (``tf.DType.name``) and numpy's share these names
FROM_NAME: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}


def torch_datatype(dtype: object) -> str | None:
    """The v2 datatype of a torch dtype (``None`` when v2 has none)."""
    return FROM_NAME.get(str(dtype).removeprefix("torch."))
