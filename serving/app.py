"""The HTTP side: a raw ASGI app speaking the Open Inference Protocol (v2), with TF Serving's
REST API (`/v1/models/...`) and TorchServe's (`/predictions/...`, `/ping`) beside it.

No framework: routing is a few string comparisons, bodies are read straight from
`receive`, and answers go out as two `send` calls. Every Starlette layer we skip is
measurable at tens of thousands of calls a second. Errors answer `{"error": ...}` (v2, v1)
or TorchServe's `{"code", "type", "message"}`. Every protocol ends in the same call: a
version's pipeline (`serving.pipeline`) if it declares one, the checks, the batcher.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from serving.batching import Batcher, QueueFull
from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from serving.metrics import ServingMetrics
from serving.pipeline import Pipeline, load_pipeline
from serving.protocols import openai, torchserve, v1
from serving.protocols.http import (
    OCTETS,
    HttpError,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
)
from serving.protocols.v2 import (
    InferenceRequest,
    OutputTensor,
    ProtocolError,
    RequestInput,
    TensorSpec,
    check_input,
    decode_request,
    encode_response,
    error_body,
)
from serving.runtime import Runtime

SERVER_NAME = "modelplane"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


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
        self.pipeline: Pipeline | None = None
        self.inputs: list[TensorSpec] = []  # what calls send (a pipeline's BYTES included)
        self.outputs: list[TensorSpec] = []  # what calls get back
        self._specs: dict[str, TensorSpec] = {}  # the model's own inputs
        self._metadata = b""
        metrics.track_serving(lambda: self.serving)
        metrics.llm = getattr(runtime, "llm_metrics", None)  # a generation runtime's series

    def load_pipeline(self, path: Path, metadata: dict[str, Any] | None = None) -> None:
        """Once the runtime is loaded (blocking: call off the event loop): the version's
        declared pipeline, bound to the model's inputs and outputs; raises when unusable."""
        pipeline = load_pipeline(path, metadata)
        if pipeline is not None:
            runtime = self.runtime
            pipeline.bind(runtime.inputs, runtime.outputs, checked=runtime.checked)
        self.pipeline = pipeline

    def mark_ready(self) -> None:
        """Call on the event loop once the runtime is loaded and warmed up."""
        self._specs = {s.name: s for s in self.runtime.inputs}
        self.checked = self.runtime.checked
        if self.pipeline is None:
            self.inputs, self.outputs = list(self.runtime.inputs), list(self.runtime.outputs)
        else:
            self.inputs, self.outputs = self.pipeline.inputs, self.pipeline.outputs
        self._metadata = orjson.dumps(
            {
                "name": self.name,
                "versions": [self.version],
                "platform": self.platform,
                "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs],
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
            elif path in openai.ROUTES:  # exact: /v1/models/{m}... stays TF Serving's
                await openai.route(self, path, method, scope, receive, send)
            elif path.startswith("/v1/models/"):
                await v1.route(self, path[11:], method, scope, receive, send)
            elif path.startswith("/predictions/"):
                await torchserve.predict(self, path[13:], method, scope, receive, send)
            elif method != "GET":
                raise HttpError(405, f"{method} not allowed on {path}")
            else:
                await self._server_route(path, send)
        except HttpError as exc:
            await respond(send, exc.status, error_body(str(exc)), retry=exc.status == 503)

    async def _server_route(self, path: str, send: Send) -> None:
        if path == "/ping":  # TorchServe's health check
            await torchserve.ping(self, send)
        elif path == "/v2/health/live":
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
            if self.pipeline is None and self.outputs != self.runtime.outputs:
                self.mark_ready()  # outputs learned by a call since (TorchScript, no signature)
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
            if self.pipeline is None:
                results = await self._submit(self._check(request.inputs))
            else:
                results = await self.run(request.inputs)
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

    async def run(self, items: list[RequestInput]) -> dict[str, OutputTensor]:
        """One call of any protocol: the pipeline's input steps, the checks against the
        model, the batcher, the pipeline's output steps."""
        pipeline = self.pipeline
        if pipeline is None:
            return await self._submit(self._check(items))
        if pipeline.heavy(items):  # big images decode on a thread, the loop keeps serving
            items = await asyncio.get_running_loop().run_in_executor(None, pipeline.prepare, items)
        else:
            items = pipeline.prepare(items)
        return pipeline.finish(await self._submit(self._check(items)))

    def records(self, outputs: dict[str, OutputTensor]) -> list[Any] | None:
        """Per-row answers of an argmax/top-k pipeline, for the JSON protocols (else None)."""
        return None if self.pipeline is None else self.pipeline.records(outputs)

    async def read_payload(self, scope: Scope, receive: Receive) -> bytes:
        """A call's body (v1, TorchServe), inflated when Content-Encoding says so."""
        encoding = b""
        for key, value in scope["headers"]:
            if key == b"content-encoding":
                encoding = value.lower()
        if not self.serving:
            raise HttpError(503, f"model {self.name!r} is not ready", "overloaded")
        body = await read_body(receive, self.max_request_bytes)
        if encoding and encoding != b"identity":
            body = self._decompress(body, encoding)
        return body

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

    async def _submit(self, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, OutputTensor]:
        try:
            future = self.batcher.submit(inputs)
        except QueueFull as exc:
            raise HttpError(503, f"server busy: {exc}; retry later", "overloaded") from None
        return await future

    def _check(self, items: list[RequestInput]) -> dict[str, np.ndarray[Any, Any]]:
        inputs: dict[str, np.ndarray[Any, Any]] = {}
        for item in items:
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
            for item in items:
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
