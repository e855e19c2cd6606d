"""TF Serving's REST API (which KServe v1 follows): model status, metadata and `:predict`.

- `GET /v1/models/{m}[/versions/{v}]`: `{"model_version_status": [{"version", "state",
  "status"}]}`, state `AVAILABLE` once ready (`LOADING` before, `UNLOADING` while draining).
- `GET /v1/models/{m}[/versions/{v}]/metadata`: the `serving_default` signature.
- `POST /v1/models/{m}[/versions/{v}]:predict` with `instances` (row format: one entry per
  batch row, objects keyed by input name when there are several) or `inputs` (columnar: the
  tensor, or an object of tensors); answers `predictions` or `outputs` in the same form.
  Binary values are `{"b64": "..."}` both ways (outputs whose name ends in `_bytes`, or that
  are not UTF-8). With an argmax/top-k pipeline a row is `{"label", "index", "score"}`.

Errors are `{"error": "..."}`: 400 for calls that do not fit the model, 404, 500, 503.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contract.dtypes import NUMERIC_DTYPES
from serving.protocols.http import Endpoint, HttpError, Receive, Scope, Send, failure, respond
from serving.protocols.v2 import OutputTensor, ProtocolError, RequestInput, TensorSpec, error_body

SIGNATURE = "serving_default"
TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BF16": "DT_BFLOAT16",
    "BYTES": "DT_STRING",
}


@dataclass(slots=True)
class PredictRequest:
    inputs: list[RequestInput]
    row: bool  # `instances` → answer `predictions`; `inputs` (columnar) → `outputs`


async def route(
    app: Endpoint, rest: str, method: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Everything under `/v1/models/` (`rest` is the path after it)."""
    target, colon, verb = rest.partition(":")
    parts = target.split("/")
    if parts[0] != app.name:
        raise HttpError(404, f"unknown model {parts[0]!r}", "not_found")
    if parts[1:2] == ["versions"]:
        if len(parts) < 3 or parts[2] != app.version:
            wanted = parts[2] if len(parts) > 2 else ""
            raise HttpError(404, f"model {app.name!r} has no version {wanted!r}", "not_found")
        parts = parts[3:]
    else:
        parts = parts[1:]
    if colon:
        if parts or verb != "predict":
            raise HttpError(404, f"no route {rest!r}: this server answers :predict", "not_found")
        if method != "POST":
            raise HttpError(405, ":predict needs POST")
        await predict(app, scope, receive, send)
    elif method != "GET":
        raise HttpError(405, f"{method} not allowed here")
    elif not parts or parts == [""]:
        await respond(send, 200, status_body(app.version, app.serving, app.draining))
    elif parts == ["metadata"]:
        if not app.ready:
            raise HttpError(503, f"model {app.name!r} is not ready", "overloaded")
        await respond(send, 200, metadata_body(app.name, app.version, app.inputs, app.outputs))
    else:
        raise HttpError(404, f"no route /v1/models/{rest}", "not_found")


async def predict(app: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    outcome = "ok"
    try:
        body = await app.read_payload(scope, receive)
        request = decode_predict(body, app.inputs)
        outputs = await app.run(request.inputs)
        payload = encode_predict(outputs, request.row, app.records(outputs))
    except Exception as exc:  # noqa: BLE001  the call failed; the process carries on
        status, message, outcome = failure(exc)
        await respond(send, status, error_body(message), retry=status == 503)
    else:
        await respond(send, 200, payload)
    app.metrics.observe(outcome, time.perf_counter() - started)


def status_body(version: str, serving: bool, draining: bool) -> bytes:
    state = "AVAILABLE" if serving else "UNLOADING" if draining else "LOADING"
    entry = {
        "version": version,
        "state": state,
        "status": {"error_code": "OK", "error_message": ""},
    }
    return orjson.dumps({"model_version_status": [entry]})


def metadata_body(
    name: str, version: str, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> bytes:
    signature = {
        "inputs": {s.name: _tensor_info(s) for s in inputs},
        "outputs": {s.name: _tensor_info(s) for s in outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return orjson.dumps(
        {
            "model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        }
    )


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    dims = [{"size": str(d), "name": ""} for d in spec.shape]
    return {
        "dtype": TF_DTYPES.get(spec.datatype, "DT_INVALID"),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": spec.name,
    }


# -- request ------------------------------------------------------------------------------


def decode_predict(body: bytes, specs: list[TensorSpec]) -> PredictRequest:
    doc = loads(body)
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object")
    signature = doc.get("signature_name")
    if signature not in (None, "", SIGNATURE):
        raise ProtocolError(f"signature_name {signature!r} not found; this model has {SIGNATURE!r}")
    if ("instances" in doc) == ("inputs" in doc):
        raise ProtocolError(
            "give either 'instances' (row format) or 'inputs' (columnar format), not both"
            if "instances" in doc
            else "needs 'instances' (row format) or 'inputs' (columnar format)"
        )
    by_name = {s.name: s for s in specs}
    if "instances" in doc:
        columns = _rows_to_columns(doc["instances"], by_name)
    else:
        columns = named_values(doc["inputs"], by_name, "'inputs'")
    return PredictRequest(
        [json_tensor(name, value, by_name.get(name)) for name, value in columns.items()],
        row="instances" in doc,
    )


def loads(body: bytes) -> Any:
    """JSON, with TF Serving's tolerance of NaN and Infinity (orjson refuses them)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError(f"malformed JSON: {exc}") from None


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def named_values(value: Any, specs: dict[str, TensorSpec], what: str) -> dict[str, Any]:
    """`value` as {input name: value}: an object of inputs, or the only input's value."""
    if isinstance(value, dict) and not is_b64(value):
        unknown = sorted(set(value) - set(specs)) if specs else []
        if unknown:
            raise ProtocolError(f"unknown input {unknown[0]!r}; model inputs are {sorted(specs)}")
        if not value:
            raise ProtocolError(f"{what} names no input")
        return value
    if len(specs) != 1:
        raise ProtocolError(
            f"{what} must be an object keyed by input name: model inputs are {sorted(specs)}"
        )
    return {next(iter(specs)): value}


def _rows_to_columns(instances: Any, specs: dict[str, TensorSpec]) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise ProtocolError("'instances' must be a non-empty list, one entry per row")
    named = [isinstance(i, dict) and not is_b64(i) for i in instances]
    if not any(named):
        return named_values(instances, specs, "'instances'")
    if not all(named):
        raise ProtocolError("'instances' mixes objects keyed by input name with bare values")
    names = list(instances[0])
    if specs and (unknown := sorted(set(names) - set(specs))):
        raise ProtocolError(f"unknown input {unknown[0]!r}; model inputs are {sorted(specs)}")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row, instance in enumerate(instances):
        if set(instance) != set(names):
            raise ProtocolError(
                f"instance {row} has inputs {sorted(instance)}, instance 0 has {sorted(names)}"
            )
        for name in names:
            columns[name].append(instance[name])
    return columns


def json_tensor(name: str, value: Any, spec: TensorSpec | None) -> RequestInput:
    """A JSON value (nested lists; strings or `{"b64"}` for BYTES) as the spec's datatype."""
    datatype = spec.datatype if spec is not None else _guess(value)
    if datatype == "BYTES":
        array = _bytes_array(name, value)
    else:
        try:
            array = np.asarray(value, dtype=np.float32 if datatype == "BF16" else None)
            array = _cast(array, datatype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ProtocolError(f"input {name!r}: data does not fit {datatype}: {exc}") from None
    return RequestInput(name, datatype, array.shape, array)


def _cast(array: np.ndarray[Any, Any], datatype: str) -> np.ndarray[Any, Any]:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"expected numbers, got {array.dtype.kind!r} values")
    if datatype == "BF16":  # round to nearest even, keep the top 16 bits
        bits = array.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    dtype = NUMERIC_DTYPES[datatype]
    if dtype.kind in "iu" and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise ValueError("fractional values for an integer input")
    return array.astype(dtype, copy=False)


def _guess(value: Any) -> str:
    while isinstance(value, list) and value:
        value = value[0]
    return "BYTES" if isinstance(value, str) or is_b64(value) else "FP32"


def _bytes_array(name: str, value: Any) -> np.ndarray[Any, Any]:
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[bytes] = []
    _flatten(name, value, shape, 0, flat)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _flatten(name: str, value: Any, shape: list[int], depth: int, out: list[bytes]) -> None:
    if depth == len(shape):
        out.append(_element(name, value))
        return
    if not isinstance(value, list) or len(value) != shape[depth]:
        raise ProtocolError(f"input {name!r}: nested lists of unequal lengths")
    for item in value:
        _flatten(name, item, shape, depth + 1, out)


def _element(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"input {name!r}: invalid base64: {exc}") from None
    raise ProtocolError(
        f'input {name!r}: BYTES values are strings or {{"b64": ...}}, got {type(value).__name__}'
    )


# -- response -----------------------------------------------------------------------------


def encode_predict(outputs: dict[str, OutputTensor], row: bool, records: list[Any] | None) -> bytes:
    if row:
        if records is not None:
            return orjson.dumps({"predictions": records}, option=orjson.OPT_SERIALIZE_NUMPY)
        return orjson.dumps({"predictions": _rows(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY)
    values = {name: json_value(name, t) for name, t in outputs.items()}
    doc = next(iter(values.values())) if len(values) == 1 else values
    return orjson.dumps({"outputs": doc}, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows(outputs: dict[str, OutputTensor]) -> Any:
    if len(outputs) == 1:
        name, tensor = next(iter(outputs.items()))
        return json_value(name, tensor)
    sizes = {t.data.shape[0] if t.data.ndim else None for t in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ProtocolError(
            "the model's outputs do not share a batch dimension; ask in the columnar "
            "format ('inputs') to get them as they are"
        )
    columns = {name: _as_list(json_value(name, t)) for name, t in outputs.items()}
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


def json_value(name: str, tensor: OutputTensor) -> Any:
    """An output as JSON: numbers as a (numpy) array, BYTES as strings or `{"b64"}`."""
    if tensor.datatype == "BYTES":
        binary = name.endswith("_bytes")
        return _nest([_text(b, binary) for b in tensor.data.ravel()], tensor.data.shape)
    if tensor.datatype == "BF16":
        return (tensor.data.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(tensor.data)


def _text(value: bytes, binary: bool) -> Any:
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode()}


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return flat[0]
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)] if size else []
    return flat
