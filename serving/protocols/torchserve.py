"""TorchServe's inference API: `POST|PUT /predictions/{m}[/{version}]` and `GET /ping`.

A body is one item, as TorchServe's handlers see it. An image (or any non-JSON body: `curl
-T cat.jpg`, `-F data=@cat.jpg`, `--data-binary`) goes to the input that takes raw bytes: a
pipeline's image or text step, or a model's BYTES input. A JSON body is the model's
input(s): the only input's value, or an object keyed by input name (`{"b64": ...}` for
bytes); a value one dimension short of the model's input is one item, answered without
the batch dimension. An argmax/top-k pipeline answers `{"label", "index", "score"}` (a list
of them for top-k). Errors keep TorchServe's shape: `{"code", "type", "message"}`.
"""

from __future__ import annotations

import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
import orjson

from serving.protocols.http import (
    Endpoint,
    HttpError,
    Receive,
    Scope,
    Send,
    failure,
    header,
    respond,
)
from serving.protocols.v1 import is_b64, json_tensor, json_value, loads, named_values
from serving.protocols.v2 import OutputTensor, ProtocolError, RequestInput, TensorSpec

ERROR_TYPES = {
    400: "BadRequestException",
    404: "ModelNotFoundException",
    405: "MethodNotAllowedException",
    413: "RequestEntityTooLargeException",
    415: "UnsupportedMediaTypeException",
    503: "ServiceUnavailableException",
}
HEALTHY = orjson.dumps({"status": "Healthy"})
UNHEALTHY = orjson.dumps({"status": "Unhealthy"})


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "InternalServerException" if status >= 500 else "BadRequest")
    return orjson.dumps({"code": status, "type": kind, "message": message})


async def ping(app: Endpoint, send: Send) -> None:
    await respond(send, 200 if app.serving else 503, HEALTHY if app.serving else UNHEALTHY)


async def predict(
    app: Endpoint, rest: str, method: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """`rest` is the path after `/predictions/`: `m` or `m/version`."""
    started = time.perf_counter()
    outcome = "ok"
    try:
        _resolve(app, rest, method)
        body = await app.read_payload(scope, receive)
        items, single = decode_prediction(body, header(scope, b"content-type"), app.inputs)
        outputs = await app.run(items)
        payload = encode_prediction(outputs, single, app.records(outputs))
    except Exception as exc:  # noqa: BLE001  the call failed; the process carries on
        status, message, outcome = failure(exc)
        await respond(send, status, error_body(status, message), retry=status == 503)
    else:
        await respond(send, 200, payload)
    app.metrics.observe(outcome, time.perf_counter() - started)


def _resolve(app: Endpoint, rest: str, method: str) -> None:
    parts = rest.split("/")
    if parts[0] != app.name:
        raise HttpError(404, f"Model not found: {parts[0]}", "not_found")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] not in ("", app.version)):
        raise HttpError(
            404, f"Model version {parts[1]} does not exist for model {app.name}", "not_found"
        )
    if method not in ("POST", "PUT"):
        raise HttpError(405, f"{method} not allowed: predictions take POST or PUT")


def decode_prediction(
    body: bytes, content_type: bytes, specs: list[TensorSpec]
) -> tuple[list[RequestInput], bool]:
    """The call's inputs, and whether it was one item (answered without a batch axis)."""
    kind = content_type.partition(b";")[0].strip().lower()
    if kind == b"multipart/form-data":
        body, kind = _form_file(body, content_type)
    raw = [s for s in specs if s.datatype == "BYTES"]
    is_json = kind == b"application/json" or kind.endswith(b"+json")
    if not is_json and len(raw) == 1 and len(specs) == 1:
        array = np.empty(1, dtype=object)
        array[:] = [body]
        return [RequestInput(raw[0].name, "BYTES", (1,), array)], True
    if not body:
        raise ProtocolError("empty body: send an image, or JSON with the model's inputs")
    if not is_json and body[:1] not in (b"{", b"[") and not body[:1].isdigit():
        names = [s.name for s in specs]
        raise ProtocolError(
            f"this model takes JSON (its inputs are {names}); the body is "
            f"{kind.decode('latin-1') or 'of no content type'} and no pipeline step reads it"
        )
    return _json_inputs(loads(body), specs)


def _json_inputs(doc: Any, specs: list[TensorSpec]) -> tuple[list[RequestInput], bool]:
    by_name = {s.name: s for s in specs}
    if isinstance(doc, dict) and not is_b64(doc) and len(doc) == 1:
        [(key, value)] = doc.items()
        if key in ("data", "body") and key not in by_name:  # TorchServe handlers' convention
            doc = value
    items = [
        json_tensor(name, value, by_name.get(name))
        for name, value in named_values(doc, by_name, "the JSON body").items()
    ]
    singles = {_is_item(i, by_name.get(i.name)) for i in items}
    if len(singles) > 1:
        raise ProtocolError("some inputs are one item and others a batch: send all alike")
    single = singles.pop()
    if single:
        items = [RequestInput(i.name, i.datatype, (1, *i.shape), i.data[None]) for i in items]
    return items, single


def _is_item(item: RequestInput, spec: TensorSpec | None) -> bool:
    return spec is not None and len(item.shape) == len(spec.shape) - 1


def _form_file(body: bytes, content_type: bytes) -> tuple[bytes, bytes]:
    """The `data` (or `body`, or first) part of a multipart form, as `curl -F` sends it."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ProtocolError("malformed multipart/form-data body")
    parts = list(message.iter_parts())
    if not parts:
        raise ProtocolError("multipart/form-data body without parts")
    named = {p.get_param("name", header="content-disposition"): p for p in parts}
    part = named.get("data") or named.get("body") or parts[0]
    payload = part.get_payload(decode=True)
    return bytes(payload or b""), part.get_content_type().encode()


def encode_prediction(
    outputs: dict[str, OutputTensor], single: bool, records: list[Any] | None
) -> bytes:
    if records is not None:
        doc = records[0] if single and len(records) == 1 else records
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    values = {name: json_value(name, t) for name, t in outputs.items()}
    if single:
        values = {name: _first(v) for name, v in values.items()}
    doc = next(iter(values.values())) if len(values) == 1 else values
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _first(value: Any) -> Any:
    """The one item of a batch of one (a 0-d output has no batch axis to drop)."""
    if isinstance(value, np.ndarray):
        return value[0] if value.ndim and len(value) else value
    return value[0] if isinstance(value, list) and value else value
