"""HTTP to the control plane: one pooled ``httpx.Client``, the bearer token, errors mapped,
and retries with exponential backoff where a retry cannot do harm."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import urllib3

from client.errors import ConnectionFailed, Unavailable, from_response
from contract.paths import API_PREFIX

API = API_PREFIX
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


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
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        headers = {"User-Agent": "modelplane-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        # Presigned object-store URLs carry their own signature: never our token.
        self.bare = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        # Big bodies read from the store: urllib3 reads them ~2x faster than httpx (h11).
        self.store = urllib3.PoolManager(
            maxsize=32, timeout=urllib3.Timeout(connect=10.0, read=timeout), retries=False
        )

    def close(self) -> None:
        self.http.close()
        self.bare.close()
        self.store.clear()

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
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.PoolTimeout)
                if attempt < self.retries and (safe or never_sent) and _rewindable(kwargs):
                    self.sleep(attempt, None)
                    attempt += 1
                    continue
                raise ConnectionFailed(f"cannot reach {self.url}: {_describe(exc)}") from exc
            if response.is_success or response.status_code in expect:
                return response
            error = from_response(response)
            if (
                isinstance(error, Unavailable)
                and safe
                and attempt < self.retries
                and _rewindable(kwargs)
            ):
                self.sleep(attempt, error.retry_after)
                attempt += 1
                continue
            raise error

    def sleep(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        time.sleep(delay)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def _rewindable(kwargs: dict[str, Any]) -> bool:
    """A streamed body (an iterator) cannot be sent twice; bytes and JSON can."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | bytearray | str)


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
