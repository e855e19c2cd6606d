"""A real HTTP reverse proxy that records every request it forwards (method, path, query).

Put in front of the S3 server, it shows from the store's side which requests reached it:
e.g. which multipart parts a client uploaded. Bodies and the Host header pass unchanged,
so SigV4 signatures (presigned URLs included) still verify.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class RecordingProxy:
    """``with RecordingProxy("127.0.0.1", 8333) as proxy: ... proxy.url ... proxy.requests``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.requests: list[tuple[str, str, dict[str, list[str]], bool]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                    raise RuntimeError("chunked request bodies are not supported")
                body = self.rfile.read(length) if length else None
                parts = urlsplit(self.path)
                with proxy._lock:
                    copy = "x-amz-copy-source" in self.headers
                    proxy.requests.append((self.command, parts.path, parse_qs(parts.query), copy))
                upstream = http.client.HTTPConnection(*proxy.target, timeout=60)
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for key, value in self.headers.items():
                        if key.lower() not in _HOP and key.lower() != "expect":
                            upstream.putheader(key, value)
                    upstream.endheaders(body)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    if self.command == "HEAD":  # keep the object's length, send no body
                        self.send_header("Content-Length", answer.getheader("Content-Length", "0"))
                        self.end_headers()
                        return
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def part_uploads(self) -> list[int]:
        """Part numbers of the multipart part uploads forwarded so far, in order (not the
        server-side copies of parts, ``UploadPartCopy``)."""
        with self._lock:
            return [
                int(query["partNumber"][0])
                for method, _, query, copy in self.requests
                if method == "PUT" and "partNumber" in query and not copy
            ]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
