"""Open Inference Protocol (KServe v2) wire types, with Triton's binary tensor extension: the
reference protocol. `TensorSpec`, `RequestInput` and `OutputTensor` are also what the other
protocols (`v1`, `torchserve`) decode into and encode from, and what runtimes see.

Parsing is hand-written over `orjson` output rather than pydantic models: this is the hot
path, and a binary tensor must stay a `numpy.frombuffer` view of the request body.
The datatype table is ``contract.dtypes`` (BF16 travels as its raw 16-bit pattern).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from contract.dtypes import DATATYPES, NUMERIC_DTYPES

MAX_ELEMENTS = 1 << 31  # a declared shape beyond this is refused before anything is allocated
_LEN = struct.Struct("<I")


class ProtocolError(ValueError):
    """A request that breaks the protocol; answered 400 with `{"error": str(exc)}`."""


@dataclass(slots=True)
class TensorSpec:
    """One input or output as model metadata shows it; -1 in `shape` means any size."""

    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(slots=True)
class RequestInput:
    """A decoded input: `data` is shaped; BYTES are an object array of `bytes`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]


@dataclass(slots=True)
class RequestOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferenceRequest:
    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None  # None: every output, in `binary_default` form
    binary_default: bool = False


@dataclass(slots=True)
class OutputTensor:
    """A result tensor as a runtime returns it (BF16 as `uint16` bits, BYTES as objects)."""

    datatype: str
    data: np.ndarray[Any, Any]


@dataclass(slots=True)
class _Cursor:
    """Walks the binary section of a request, input after input."""

    buffer: bytes | bytearray | memoryview
    offset: int = 0
    views: list[memoryview] = field(default_factory=list)

    def take(self, name: str, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.buffer):
            raise ProtocolError(
                f"input {name!r}: binary body truncated: needs {size} bytes at offset "
                f"{self.offset}, only {len(self.buffer) - self.offset} left"
            )
        view = memoryview(self.buffer)[self.offset : end]
        self.offset = end
        return view


def decode_request(body: bytes, header_length: int | None) -> InferenceRequest:
    """Parse a v2 infer body; `header_length` is `Inference-Header-Content-Length` if sent."""
    if header_length is None:
        header_length = len(body)
    elif header_length > len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length {header_length} exceeds the body ({len(body)} bytes)"
        )
    try:
        doc = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    cursor = _Cursor(memoryview(body)[header_length:])
    inputs = [_decode_input(item, cursor) for item in raw_inputs]
    if cursor.offset != len(cursor.buffer):
        extra = len(cursor.buffer) - cursor.offset
        raise ProtocolError(f"{extra} bytes after the last binary input (wrong header length?)")
    params = doc.get("parameters")
    binary_default = isinstance(params, dict) and params.get("binary_data_output") is True
    request_id = doc.get("id")
    return InferenceRequest(
        id=request_id if isinstance(request_id, str) else None,
        inputs=inputs,
        outputs=_decode_outputs(doc.get("outputs"), binary_default),
        binary_default=binary_default,
    )


def _decode_outputs(raw: Any, binary_default: bool) -> list[RequestOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("each requested output needs a string 'name'")
        params = item.get("parameters")
        binary = params.get("binary_data") if isinstance(params, dict) else None
        outputs.append(
            RequestOutput(item["name"], binary if isinstance(binary, bool) else binary_default)
        )
    return outputs


def _decode_input(item: Any, cursor: _Cursor) -> RequestInput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError("each input needs a string 'name'")
    name: str = item["name"]
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}")
    shape = _decode_shape(name, item.get("shape"))
    count = math.prod(shape)
    params = item.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
        data = _binary_data(name, datatype, shape, count, cursor.take(name, size))
    else:
        data = _json_data(name, datatype, shape, count, item.get("data"))
    return RequestInput(name, datatype, shape, data)


def _decode_shape(name: str, shape: Any) -> tuple[int, ...]:
    if type(shape) is not list:
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    for d in shape:
        if type(d) is not int or d < 0:  # type(): bool is an int subclass, and not a size
            raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if math.prod(shape) > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {shape} has more than {MAX_ELEMENTS} elements")
    return tuple(shape)


def _binary_data(
    name: str, datatype: str, shape: tuple[int, ...], count: int, raw: memoryview
) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return _split_bytes(name, raw, count).reshape(shape)
    dtype = NUMERIC_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: binary_data_size {len(raw)} does not match shape {list(shape)} "
            f"of {datatype} ({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(name: str, raw: memoryview, count: int) -> np.ndarray[Any, Any]:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: truncated BYTES length prefix")
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element overruns its binary data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: {len(items)} BYTES elements, shape needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _json_data(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
) -> np.ndarray[Any, Any]:
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: needs 'data' (a list) or binary_data_size")
    if datatype == "BF16":
        raise ProtocolError(f"input {name!r}: BF16 must be sent as binary data")
    try:
        if datatype == "BYTES":
            array = _json_bytes(data)
        else:
            array = np.asarray(data, dtype=NUMERIC_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: data does not fit {datatype}: {exc}") from None
    if array.size != count:
        raise ProtocolError(
            f"input {name!r}: data has {array.size} elements, shape {list(shape)} needs {count}"
        )
    return array.reshape(shape)


def _json_bytes(data: list[Any]) -> np.ndarray[Any, Any]:
    flat: list[bytes] = []
    _flatten_strings(data, flat)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def _flatten_strings(values: list[Any], out: list[bytes]) -> None:
    for value in values:
        if isinstance(value, list):
            _flatten_strings(value, out)
        elif isinstance(value, str):
            out.append(value.encode())
        else:
            raise ValueError(f"BYTES elements must be strings, got {type(value).__name__}")


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, OutputTensor, bool]],
) -> tuple[bytes, int | None]:
    """Body and, when any output is binary, the JSON header's length."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if binary:
            raw = _binary_output(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_output(tensor)
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = described
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _binary_output(tensor: OutputTensor) -> bytes | memoryview:
    if tensor.datatype == "BYTES":
        return b"".join(_LEN.pack(len(b)) + b for b in tensor.data.ravel())
    data: Any = np.ascontiguousarray(tensor.data)  # numpy arrays are buffers; stubs lag
    return memoryview(data).cast("B")


def _json_output(tensor: OutputTensor) -> Any:
    if tensor.datatype == "BYTES":
        return [b.decode("utf-8", "replace") for b in tensor.data.ravel()]
    if tensor.datatype == "BF16":  # bit pattern → float32: bf16 is the top half of an fp32
        return (tensor.data.astype(np.uint32) << 16).view(np.float32).ravel()
    return np.ascontiguousarray(tensor.data).ravel()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def check_input(spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    """A call's input against the model's spec: 400 naming the input and the expectation."""
    if datatype != spec.datatype:
        raise ProtocolError(
            f"input {spec.name!r}: datatype {datatype}, model expects {spec.datatype}"
        )
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise ProtocolError(f"input {spec.name!r}: shape {list(shape)}, model expects {spec.shape}")
