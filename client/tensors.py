"""numpy arrays to and from the Open Inference Protocol (v2) with Triton's binary tensor
extension: a JSON header, then each tensor's raw bytes, its length in
``Inference-Header-Content-Length``. BYTES tensors are 4-byte little-endian length
prefixed; BF16 travels as its 16-bit pattern (``uint16``)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from contract.dtypes import FROM_NUMPY, NUMERIC_DTYPES

HEADER = "Inference-Header-Content-Length"
_LEN = struct.Struct("<I")

DTYPES = NUMERIC_DTYPES
_FROM_NUMPY = FROM_NUMPY


class TensorError(ValueError):
    """An array the protocol cannot carry, or an answer that breaks it."""


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    try:
        return _FROM_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise TensorError(f"numpy dtype {array.dtype} has no v2 datatype") from None


def _raw(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
        return b"".join(_LEN.pack(len(b)) + b for b in items)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype].newbyteorder("<")).tobytes()


def encode_request(
    inputs: Mapping[str, np.ndarray[Any, Any]], outputs: list[str] | None = None
) -> tuple[bytes, int]:
    """The body and its JSON header's length; every output is asked for in binary."""
    described, blobs = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        raw = _raw(array, datatype)
        described.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    doc: dict[str, Any] = {"inputs": described, "parameters": {"binary_data_output": True}}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *blobs]), len(header)


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray[Any, Any]]:
    """Output name → array, from a binary or plain JSON answer."""
    length = len(body) if header_length is None else header_length
    try:
        doc = json.loads(body[:length])
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise TensorError(f"the answer is not v2 JSON: {exc}") from None
    offset, results = length, {}
    for item in doc.get("outputs") or []:
        shape = [int(d) for d in item["shape"]]
        datatype = item["datatype"]
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = body[offset : offset + size]
            if len(raw) != size:
                raise TensorError(f"output {item['name']!r}: binary data truncated")
            offset += size
            results[item["name"]] = _from_raw(raw, datatype, shape)
        else:
            results[item["name"]] = _from_json(item.get("data") or [], datatype, shape)
    return results


def _from_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            (n,) = _LEN.unpack_from(raw, offset)
            items.append(raw[offset + 4 : offset + 4 + n])
            offset += 4 + n
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"unknown datatype {datatype!r}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape).copy()


def _from_json(data: list[Any], datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        array = np.empty(len(data), dtype=object)
        array[:] = [str(v).encode() for v in data]
        return array.reshape(shape)
    if datatype == "BF16":  # sent as float32 values in JSON
        return np.asarray(data, dtype=np.float32).reshape(shape)
    return np.asarray(data, dtype=DTYPES[datatype]).reshape(shape)
