"""OpenAI's API over a language model: `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions` (`serving.runtimes.hf.HfCausalLmRuntime`'s engine) and
`POST /v1/embeddings` (`HfEmbeddingRuntime`).

Request bodies are OpenAI's wire types by their names (`ChatCompletionRequest`, ...); fields
we do not act on are accepted and ignored, as OpenAI's own SDK sends some by default. With
`stream: true` the answer is server-sent events, one `data: {chunk}` per engine step and
`data: [DONE]` last; no Content-Length, so the stable URL forwards it chunk by chunk. Errors
are `{"error": {"message", "type", "param", "code"}}`. A client that goes away mid-answer
cancels its sequence: the engine drops it before its next step.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.protocols.http import Endpoint, HttpError, Receive, Scope, Send, read_body
from serving.runtimes.base import InputsDoNotFit

ROUTES = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class OpenAIError(Exception):
    """Answered as `{"error": {...}}` with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> bytes:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatMessage(_Request):
    role: str
    content: str | list[dict[str, Any]] | None = None


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension, for benchmarks: always max_tokens


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


async def route(
    app: Any, path: str, method: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """One OpenAI call on `app` (a ServingApp whose runtime is an hf runtime)."""
    try:
        if path == "/v1/models":
            if method != "GET":
                raise OpenAIError(405, f"{method} not allowed on {path}")
            await _send_json(send, 200, _models(app))
            return
        if method != "POST":
            raise OpenAIError(405, f"{method} not allowed on {path}; use POST")
        if not app.serving:
            raise OpenAIError(503, f"model {app.name!r} is not ready", kind="server_error")
        try:
            body = await read_body(receive, app.max_request_bytes)
        except HttpError as exc:
            raise OpenAIError(exc.status, str(exc)) from None
        if path == "/v1/embeddings":
            await _embeddings(app, body, send)
        else:
            await _generate(app, path, body, scope, receive, send)
    except OpenAIError as exc:
        headers = [(b"retry-after", b"1")] if exc.status in (429, 503) else []
        await _send_json(send, exc.status, exc.body(), headers)


def _parse(model: type[_Request], body: bytes) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{param}: {first['msg']}", param=param) from None


def _check_model(app: Any, name: str) -> None:
    if name != app.name:
        raise OpenAIError(
            404,
            f"The model {name!r} does not exist; this endpoint serves {app.name!r}",
            param="model",
            code="model_not_found",
        )


def _models(app: Any) -> bytes:
    entry = {"id": app.name, "object": "model", "created": 0, "owned_by": "modelplane"}
    return orjson.dumps({"object": "list", "data": [entry]})


async def _generate(
    app: Any, path: str, body: bytes, scope: Scope, receive: Receive, send: Send
) -> None:
    from serving.llm.engine import QueueFull, SamplingParams

    runtime = app.runtime
    if getattr(runtime, "engine", None) is None:
        raise OpenAIError(404, f"{app.name!r} is not a language model: no {path}")
    chat = path == "/v1/chat/completions"
    request = _parse(ChatCompletionRequest if chat else CompletionRequest, body)
    _check_model(app, request.model)
    try:
        if chat:
            messages = [_message(m) for m in request.messages]
            prompt = runtime.chat_prompt(messages)
        else:
            prompt = _completion_prompt(runtime, request.prompt)
    except InputsDoNotFit as exc:
        raise OpenAIError(400, str(exc), param="messages" if chat else "prompt") from None
    wanted = (
        (getattr(request, "max_completion_tokens", None) or request.max_tokens)
        if chat
        else (request.max_tokens)
    )
    context = runtime.context_length
    if len(prompt) >= context or (wanted is not None and len(prompt) + wanted > context):
        asked = len(prompt) + (wanted or 0)
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{asked} tokens ({len(prompt)} in the {'messages' if chat else 'prompt'}, "
            f"{wanted or 0} in the completion). Please reduce the length of the "
            f"{'messages' if chat else 'prompt'} or completion.",
            param="max_tokens" if wanted and len(prompt) < context else "messages",
            code="context_length_exceeded",
        )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    params = SamplingParams(
        max_tokens=wanted or context - len(prompt),
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=tuple(s for s in stop if s),
        ignore_eos=request.ignore_eos,
    )
    try:
        seq = runtime.engine.submit(prompt, params)
    except QueueFull as exc:
        raise OpenAIError(
            429, f"server busy: {exc}; retry later", kind="rate_limit_error"
        ) from None
    watcher = asyncio.create_task(_watch_disconnect(receive, seq))
    try:
        answer = _Answer(app.name, chat, len(prompt))
        if request.stream:
            usage = request.stream_options is not None and request.stream_options.include_usage
            await _stream(send, answer, _chunks(seq), usage)
        else:
            await _send_json(send, 200, await answer.whole(_chunks(seq)))
    finally:
        seq.cancel()  # a no-op once finished; stops the engine's work when the send failed
        watcher.cancel()


def _message(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):  # content parts: only text ones mean anything here
        content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return {"role": message.role, "content": content or ""}


def _completion_prompt(runtime: Any, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return list(runtime.text_prompt(list(prompt)))
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise OpenAIError(400, "one prompt per request is served here", param="prompt")
        text = str(prompt[0])
    else:
        text = prompt
    if not text:
        raise OpenAIError(400, "prompt is empty", param="prompt")
    return list(runtime.text_prompt(text))


async def _chunks(seq: Any) -> AsyncIterator[Any]:
    while True:
        chunk = await seq.queue.get()
        yield chunk
        if chunk.finish_reason is not None:
            return


async def _watch_disconnect(receive: Receive, seq: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            seq.cancel()
            return


class _Answer:
    """Builds the JSON of one completion, whole or as stream chunks."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int) -> None:
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + (".chunk" if stream and self.chat else ""),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    async def whole(self, chunks: AsyncIterator[Any]) -> bytes:
        parts: list[str] = []
        finish = None
        async for chunk in chunks:
            parts.append(chunk.text)
            self.completion_tokens += len(chunk.token_ids)
            finish = chunk.finish_reason
        text = "".join(parts)
        finish = _checked_finish(finish)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return orjson.dumps(self._envelope([choice], False) | {"usage": self.usage()})

    def delta(self, text: str, finish: str | None, first: bool) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return self._envelope([choice], True)


def _checked_finish(finish: str | None) -> str:
    if finish is not None and finish.startswith("error:"):
        raise OpenAIError(500, finish[7:], kind="server_error")
    if finish == "cancelled" or finish is None:
        raise OpenAIError(503, "generation cancelled", kind="server_error")
    return finish


async def _stream(send: Send, answer: _Answer, chunks: AsyncIterator[Any], usage: bool) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    first = True
    async for chunk in chunks:
        answer.completion_tokens += len(chunk.token_ids)
        finish = chunk.finish_reason
        if finish is not None and (finish == "cancelled" or finish.startswith("error:")):
            error = {"message": finish, "type": "server_error", "param": None, "code": None}
            await _event(send, {"error": error})
            break
        if not chunk.text and finish is None and not first:
            continue  # a token that shows no text yet (held back): nothing to say
        event = answer.delta(chunk.text, finish, first)
        if usage:
            event["usage"] = None
        await _event(send, event)
        first = False
    if usage:
        await _event(send, answer._envelope([], True) | {"usage": answer.usage()})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _event(send: Send, data: dict[str, Any]) -> None:
    body = b"data: " + orjson.dumps(data) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _embeddings(app: Any, body: bytes, send: Send) -> None:
    runtime = app.runtime
    if not hasattr(runtime, "embed"):
        raise OpenAIError(404, f"{app.name!r} is not an embedding model: no /v1/embeddings")
    request = _parse(EmbeddingRequest, body)
    _check_model(app, request.model)
    texts = [request.input] if isinstance(request.input, str) else list(request.input)
    if not texts or any(not t for t in texts):
        raise OpenAIError(400, "input must be non-empty text", param="input")
    try:
        vectors, tokens = await asyncio.get_running_loop().run_in_executor(
            None, runtime.embed, texts
        )
    except InputsDoNotFit as exc:
        raise OpenAIError(400, str(exc), param="input") from None
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = (
            base64.b64encode(vector.tobytes()).decode()
            if request.encoding_format == "base64"
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    answer = {"object": "list", "data": data, "model": app.name, "usage": usage}
    await _send_json(send, 200, orjson.dumps(answer))


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "ROUTES",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Endpoint",
    "OpenAIError",
    "route",
]
