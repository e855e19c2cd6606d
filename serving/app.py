"""The HTTP side: a raw ASGI app speaking the Open Inference Protocol (v2).

No framework: routing is a few string comparisons, bodies are read straight from
`receive`, and answers go out as two `send` calls. Every Starlette layer we skip is
measurable at tens of thousands of calls a second. Errors answer `{"error": ...}`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import orjson

from serving.batching import Batcher, QueueFull
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import ServingMetrics
from serving.protocol import (
    InferenceRequest,
    OutputTensor,
    ProtocolError,
    TensorSpec,
    decode_request,
    encode_response,
    error_body,
)
from serving.runtime import Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SERVER_NAME = "modelplane"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
JSON = b"application/json"
OCTETS = b"application/octet-stream"


class HttpError(Exception):
    def __init__(self, status: int, message: str, outcome: str = "bad_request") -> None:
        super().__init__(message)
        self.status, self.outcome = status, outcome


class ServingApp:
    """Serves one model under one name and version. `ready` flips once loaded and warm;
    `draining` once SIGTERM arrived (readiness then answers 503)."""

    def __init__(
        self,
        name: str,
        version: str,
        runtime: Runtime,
        batcher: Batcher,
        metrics: ServingMetrics,
        *,
        platform: str,
        max_request_bytes: int,
    ) -> None:
        self.name, self.version, self.platform = name, version, platform
        self.runtime, self.batcher, self.metrics = runtime, batcher, metrics
        self.max_request_bytes = max_request_bytes
        self.ready = False
        self.draining = False
        self.checked = runtime.checked
        self._specs: dict[str, TensorSpec] = {}
        self._metadata = b""
        metrics.track_serving(lambda: self.serving)

    def mark_ready(self) -> None:
        """Call on the event loop once the runtime is loaded and warmed up."""
        self._specs = {s.name: s for s in self.runtime.inputs}
        self.checked = self.runtime.checked
        self._metadata = orjson.dumps(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": self.platform,
                "inputs": [s.to_json() for s in self.runtime.inputs],
                "outputs": [s.to_json() for s in self.runtime.outputs],
            }
        )
        self.ready = True

    @property
    def serving(self) -> bool:
        return self.ready and not self.draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.startswith("/v2/models/"):
                await self._model_route(path[11:].split("/"), method, scope, receive, send)
            elif method != "GET":
                raise HttpError(405, f"{method} not allowed on {path}")
            else:
                await self._server_route(path, send)
        except HttpError as exc:
            await respond(send, exc.status, error_body(str(exc)))

    async def _server_route(self, path: str, send: Send) -> None:
        if path == "/v2/health/live":
            await respond(send, 200, b"{}")
        elif path == "/v2/health/ready":
            await respond(send, 200 if self.serving else 503, b"{}")
        elif path in ("/v2", "/v2/"):
            doc = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
            await respond(send, 200, orjson.dumps(doc))
        elif path == "/metrics":
            await respond(send, 200, self.metrics.render(), METRICS_CONTENT_TYPE)
        else:
            raise HttpError(404, f"no route {path}")

    async def _model_route(
        self, parts: list[str], method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        action = self._resolve(parts)
        if action == "infer":
            if method != "POST":
                raise HttpError(405, "infer needs POST")
            await self._infer(scope, receive, send)
        elif method != "GET":
            raise HttpError(405, f"{method} not allowed here")
        elif action == "ready":
            await respond(send, 200 if self.serving else 503, b"{}")
        elif not self.ready:
            raise HttpError(503, f"model {self.name!r} is not ready")
        else:
            await respond(send, 200, self._metadata)

    def _resolve(self, parts: list[str]) -> str:
        """`m`, `m/ready`, `m/infer`, and the same under `m/versions/v`: the action."""
        if parts[0] != self.name:
            raise HttpError(404, f"unknown model {parts[0]!r}", "not_found")
        rest = parts[1:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                raise HttpError(404, "missing version after /versions/", "not_found")
            if rest[1] != self.version:
                raise HttpError(404, f"model {self.name!r} has no version {rest[1]!r}", "not_found")
            rest = rest[2:]
        if not rest or rest == [""]:
            return "metadata"
        if len(rest) == 1 and rest[0] in ("ready", "infer"):
            return rest[0]
        raise HttpError(404, f"no route {'/'.join(parts)} under /v2/models/", "not_found")

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        outcome = "ok"
        try:
            body, header_length = await self._read(scope, receive)
            request = decode_request(body, header_length)
            results = await self._submit(request)
            payload, json_length = encode_response(
                self.name, self.version, request.id, self._select(request, results)
            )
        except ProtocolError as exc:
            outcome = "bad_request"
            await respond(send, 400, error_body(str(exc)))
        except HttpError as exc:
            outcome = exc.outcome
            await respond(send, exc.status, error_body(str(exc)), retry=exc.status == 503)
        except Exception as exc:  # the model failed on this call; the process carries on
            outcome = "error"
            await respond(send, 500, error_body(f"inference failed: {exc}"))
        else:
            if json_length is None:
                await respond(send, 200, payload)
            else:
                await respond(send, 200, payload, OCTETS, header_length=json_length)
        self.metrics.observe(outcome, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive) -> tuple[bytes, int | None]:
        header_length: int | None = None
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                if not value.isdigit():
                    raise ProtocolError(
                        f"Inference-Header-Content-Length {value!r} is not a number"
                    )
                header_length = int(value)
            elif key == b"content-encoding":
                encoding = value.lower()
        if not self.serving:
            raise HttpError(503, f"model {self.name!r} is not ready", "overloaded")
        body = await read_body(receive, self.max_request_bytes)
        if encoding and encoding != b"identity":
            body = self._decompress(body, encoding)
        return body, header_length

    def _decompress(self, body: bytes, encoding: bytes) -> bytes:
        if encoding not in (b"gzip", b"deflate"):
            raise HttpError(415, f"unsupported Content-Encoding {encoding.decode()!r}")
        inflater = zlib.decompressobj(wbits=47)  # 32 + 15: zlib or gzip header
        try:
            out = inflater.decompress(body, self.max_request_bytes + 1)
        except zlib.error as exc:
            raise ProtocolError(f"body is not valid {encoding.decode()}: {exc}") from None
        if len(out) > self.max_request_bytes:
            raise HttpError(413, f"request body exceeds {self.max_request_bytes} bytes")
        return out

    async def _submit(self, request: InferenceRequest) -> dict[str, OutputTensor]:
        inputs = self._check(request)
        try:
            future = self.batcher.submit(inputs)
        except QueueFull as exc:
            raise HttpError(503, f"server busy: {exc}; retry later", "overloaded") from None
        return await future

    def _check(self, request: InferenceRequest) -> dict[str, np.ndarray[Any, Any]]:
        inputs: dict[str, np.ndarray[Any, Any]] = {}
        for item in request.inputs:
            spec = self._specs.get(item.name)
            if spec is None and self.checked:
                raise ProtocolError(
                    f"unknown input {item.name!r}; model inputs are {sorted(self._specs)}"
                )
            if item.name in inputs:
                raise ProtocolError(f"input {item.name!r} given twice")
            if spec is not None and self.checked:
                check_input(spec, item.datatype, item.shape)
            inputs[item.name] = item.data
        missing = [name for name in self._specs if name not in inputs]
        if missing:
            raise ProtocolError(f"missing inputs {missing}")
        limit = self.runtime.max_batch
        if limit is not None:
            for item in request.inputs:
                if item.shape and item.shape[0] > limit:
                    raise ProtocolError(
                        f"input {item.name!r}: batch of {item.shape[0]} exceeds the model's "
                        f"maximum {limit}"
                    )
        return inputs

    def _select(
        self, request: InferenceRequest, results: dict[str, OutputTensor]
    ) -> list[tuple[str, OutputTensor, bool]]:
        if request.outputs is None:
            return [(name, t, request.binary_default) for name, t in results.items()]
        selected = []
        for wanted in request.outputs:
            tensor = results.get(wanted.name)
            if tensor is None:
                raise ProtocolError(
                    f"unknown output {wanted.name!r}; model outputs are {sorted(results)}"
                )
            selected.append((wanted.name, tensor, wanted.binary))
        return selected


def check_input(spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    if datatype != spec.datatype:
        raise ProtocolError(
            f"input {spec.name!r}: datatype {datatype}, model expects {spec.datatype}"
        )
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise ProtocolError(f"input {spec.name!r}: shape {list(shape)}, model expects {spec.shape}")


async def read_body(receive: Receive, limit: int) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise HttpError(413, f"request body exceeds {limit} bytes")
        return body
    chunks, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "client disconnected mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    *,
    header_length: int | None = None,
    retry: bool = False,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if header_length is not None:
        headers.append((b"inference-header-content-length", b"%d" % header_length))
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
