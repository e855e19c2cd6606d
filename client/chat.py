"""Chat with a language-model deployment through its stable URL (OpenAI's API), for
``Client.chat`` and ``modelplane chat``: the request, and server-sent events read as they
arrive (``data: {json}`` events until ``data: [DONE]``). Standard library and httpx only."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from client.errors import ApiError

DONE = "[DONE]"


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each event, its lines joined (comments and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def chunks(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The stream's JSON chunks until ``[DONE]``; an ``error`` chunk raises its message."""
    for data in sse_data(lines):
        if data.strip() == DONE:
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ApiError(f"the stream sent something that is not JSON: {data[:200]!r}") from None
        if isinstance(chunk, dict) and chunk.get("error"):
            raise ApiError(error_message(chunk))
        if isinstance(chunk, dict):
            yield chunk


def deltas(lines: Iterable[str]) -> Iterator[str]:
    """The text each chunk adds to the (first) choice's message, as it arrives."""
    for chunk in chunks(lines):
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content") or choice.get("text")
                if content:
                    yield str(content)


def error_message(body: Any) -> str:
    """OpenAI's ``{"error": {"message", ...}}`` → its message (any other shape: itself)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(error or body)
