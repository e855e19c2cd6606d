"""HTTP to the control plane through the toolkit (``contract.http``): one pooled client, the
bearer token (never sent to another host), the one retry policy, errors mapped once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from client.errors import ConnectionFailed, from_response
from contract.download import BulkReader
from contract.http import IDEMPOTENT, RetryPolicy, describe, make_client
from contract.paths import API_PREFIX

API = API_PREFIX
USER_AGENT = "modelplane-sdk"


class Transport:
    """Calls that are safe to repeat (reads, PUTs, DELETEs, and POSTs the caller marks
    ``idempotent``) are retried on 503 and on transport errors; any call is retried when
    the connection could not even be opened (nothing was sent)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 8.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.policy = RetryPolicy(attempts=retries + 1, backoff=backoff, max_backoff=max_backoff)
        self.http = make_client(self.url, token=token, user_agent=USER_AGENT, timeout=timeout)
        # Big bodies read from the store (or from us) in ranges: see BulkReader.
        self.bulk = BulkReader(timeout=timeout, user_agent=USER_AGENT)

    def close(self) -> None:
        self.http.close()
        self.bulk.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        expect: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """The answer if 2xx (or a status in ``expect``); raises the mapped error otherwise.
        ``path`` is relative to the base URL (``/api/v1/...``) or absolute."""
        safe = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        once = not _rewindable(kwargs)  # a streamed body cannot be sent twice
        return self.send(
            lambda: self.http.request(method, path, **kwargs),
            idempotent=safe,
            expect=expect,
            policy=replace(self.policy, attempts=1) if once else None,
        )

    def send(
        self,
        call: Callable[[], httpx.Response],
        *,
        idempotent: bool,
        expect: tuple[int, ...] = (),
        stop: threading.Event | None = None,
        policy: RetryPolicy | None = None,
        failing: str | None = None,
    ) -> httpx.Response:
        """``call()`` under the retry policy (ended early once ``stop`` is set), its
        answer checked and its failures mapped to the SDK's errors (``failing`` says what
        could not be done when the peer could not be reached)."""
        policy = policy or (replace(self.policy, stop=stop) if stop else self.policy)
        try:
            response = policy.run(call, idempotent=idempotent)
        except httpx.TransportError as exc:
            failing = failing or f"cannot reach {self.url}"
            raise ConnectionFailed(f"{failing}: {describe(exc)}") from exc
        if response.is_success or response.status_code in expect:
            return response
        raise from_response(response)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def _rewindable(kwargs: dict[str, Any]) -> bool:
    """A streamed body (an iterator) cannot be sent twice; bytes and JSON can."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | bytearray | str)
