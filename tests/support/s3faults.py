"""moto's S3 behind a WSGI middleware that breaks chosen requests, to test failure handling.

``FaultyS3Server`` runs in a thread on a free loopback port. ``fail(rule)`` installs a rule:
``rule(request)`` sees every request and returns ``None`` (serve it normally) or a ``Fault``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from storage import make_s3_client

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class S3Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_upload_part(self) -> bool:
        return (
            self.method == "PUT"
            and "partNumber" in self.query
            and ("x-amz-copy-source" not in self.headers)
        )

    @property
    def is_complete_multipart(self) -> bool:
        return self.method == "POST" and "uploadId" in self.query

    @property
    def is_put_object(self) -> bool:
        return self.method == "PUT" and not self.query and self.path.count("/") >= 2

    @property
    def is_get_object(self) -> bool:
        return self.method == "GET" and not self.query and self.path.count("/") >= 2


@dataclass(frozen=True)
class Fault:
    """``status``: answer with this S3 error; ``drop``: close the connection, no answer;
    ``truncate``: serve the real answer but cut its body after this many bytes."""

    status: int | None = None
    code: str = "InternalError"
    drop: bool = False
    truncate: int | None = None


Rule = Callable[[S3Request], Fault | None]


@dataclass
class FaultInjector:
    app: WSGIApp
    rule: Rule | None = None
    seen: list[S3Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = S3Request(
            method=environ["REQUEST_METHOD"],
            path=environ.get("PATH_INFO", ""),
            query=parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            headers={
                key[5:].replace("_", "-").lower(): value
                for key, value in environ.items()
                if key.startswith("HTTP_")
            },
        )
        with self.lock:
            self.seen.append(request)
            fault = self.rule(request) if self.rule is not None else None
        if fault is None:
            return self.app(environ, start_response)
        if fault.truncate is not None:
            return self._truncated(environ, start_response, fault.truncate)
        _drain(environ)
        if fault.drop:
            sock: socket.socket = environ["werkzeug.socket"]
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            return []
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
            f"<Message>injected fault</Message></Error>"
        ).encode()
        start_response(
            f"{fault.status} Injected",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _truncated(
        self, environ: dict[str, Any], start_response: Callable[..., Any], keep: int
    ) -> Iterator[bytes]:
        body = b"".join(self.app(environ, start_response))
        yield body[:keep]
        # Raising after the headers went out makes werkzeug drop the connection mid-body.
        raise ConnectionAbortedError("injected truncated response")


def _drain(environ: dict[str, Any]) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)


def nth(
    predicate: Callable[[S3Request], bool], n: int, fault: Fault, *, repeat: bool = True
) -> Rule:
    """Fault the ``n``-th request matching ``predicate`` (1-based), and every later one that
    matches it too when ``repeat`` (retries of the same request fail again)."""
    count = 0

    def rule(request: S3Request) -> Fault | None:
        nonlocal count
        if not predicate(request):
            return None
        count += 1
        return fault if count == n or (repeat and count > n) else None

    return rule


class FaultyS3Server:
    def __init__(self) -> None:
        self.injector = FaultInjector(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultyS3Server:
        self._server = make_server(
            "127.0.0.1", 0, self.injector, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    def fail(self, rule: Rule | None) -> None:
        with self.injector.lock:
            self.injector.rule = rule
            self.injector.seen.clear()

    def client(self) -> Any:
        """A client configured exactly as production's (``storage.make_s3_client``)."""
        return make_s3_client(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
        )
