"""The HTTP toolkit against real loopback servers: retries (503 + Retry-After, dropped
connections, refused connections), redirects and credentials, ranged downloads and resume."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from contract.download import BulkReader, DigestError, Downloader
from contract.http import RetryPolicy, make_client, redirect_target, retry_after

DATA = os.urandom(5 * 2**20 + 4321)
PIECE = 2**20


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


Handler = Callable[[BaseHTTPRequestHandler, int], None]  # the request, its number (0, 1, …)


class Server(ThreadingHTTPServer):
    """Answers with ``handler``; records every request."""

    daemon_threads = True

    def __init__(self, handler: Handler, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Recorder)
        self.handler = handler
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        # A short poll: `shutdown` waits for the loop to notice (0.5 s by default, every test).
        threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            n = len(self.server.seen)
            self.server.seen.append(Seen(self.command, self.path, dict(self.headers)))
        self.server.handler(self, n)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


def answer(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    request.send_response(status)
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def drop(request: BaseHTTPRequestHandler) -> None:
    """Close the connection without a byte of answer."""
    request.close_connection = True
    request.connection.shutdown(socket.SHUT_RDWR)


def serve_ranges(data: bytes, ignore_range: bool = False) -> Handler:
    def handle(request: BaseHTTPRequestHandler, n: int) -> None:
        wanted = request.headers.get("Range")
        if wanted is None or ignore_range:
            answer(request, 200, data)
            return
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) if last else len(data) - 1
        answer(request, 206, data[start : end + 1])

    return handle


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def serve(servers: list[Server]) -> Callable[[Handler], Server]:
    def start(handler: Handler) -> Server:
        server = Server(handler)
        servers.append(server)
        return server

    return start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)


# -- the retry policy ------------------------------------------------------------------------


def test_a_503_is_retried_after_its_retry_after(serve: Callable[[Handler], Server]) -> None:
    def handle(request: BaseHTTPRequestHandler, n: int) -> None:
        if n == 0:
            answer(request, 503, b"busy", {"Retry-After": "1"})
        else:
            answer(request, 200, b"ok")

    server = serve(handle)
    policy = RetryPolicy(attempts=3, backoff=0.01, max_backoff=5.0)
    with make_client(server.url) as http:
        started = time.monotonic()
        response = policy.run(lambda: http.get("/x"), idempotent=True)
    assert response.status_code == 200 and response.text == "ok"
    assert 1.0 <= time.monotonic() - started < 3
    assert len(server.seen) == 2


def test_retry_after_is_capped_by_max_backoff(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda request, n: answer(request, 503, b"", {"Retry-After": "3600"}))
    policy = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.2)
    with make_client(server.url) as http:
        started = time.monotonic()
        response = policy.run(lambda: http.get("/x"), idempotent=True)
    assert response.status_code == 503  # the last answer, once the attempts are spent
    assert len(server.seen) == 3
    assert time.monotonic() - started < 2


def test_retry_after_may_be_an_http_date() -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    waited = retry_after(httpx.Response(503, headers={"Retry-After": when}))
    assert waited is not None and 25 < waited <= 30
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_each_retry_is_logged_without_the_query(
    serve: Callable[[Handler], Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(lambda request, n: answer(request, 503 if n == 0 else 200))
    policy = RetryPolicy(attempts=2, backoff=0.01, log=logging.getLogger("test.retries"))
    with make_client(server.url) as http, caplog.at_level(logging.WARNING, "test.retries"):
        policy.run(lambda: http.get("/blob?X-Amz-Signature=secret"), idempotent=True)
    [line] = [r.getMessage() for r in caplog.records if r.name == "test.retries"]
    assert line.startswith(f"GET {server.url}/blob: answered 503; try 2 in ")
    assert "secret" not in line


def test_a_503_to_a_post_is_not_retried(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda request, n: answer(request, 503, b"busy"))
    with make_client(server.url) as http:
        response = FAST.run(lambda: http.post("/x", json={}), idempotent=False)
    assert response.status_code == 503 and len(server.seen) == 1


def test_a_dropped_connection_is_retried_for_a_get_but_not_for_a_post(
    serve: Callable[[Handler], Server],
) -> None:
    def handle(request: BaseHTTPRequestHandler, n: int) -> None:
        if n in (0, 2):
            drop(request)
        else:
            answer(request, 200, b"ok")

    server = serve(handle)
    with make_client(server.url) as http:
        assert FAST.run(lambda: http.get("/x"), idempotent=True).text == "ok"
        with pytest.raises(httpx.TransportError):
            FAST.run(lambda: http.post("/x", json={}), idempotent=False)
    assert [s.method for s in server.seen] == ["GET", "GET", "POST"]


def test_a_post_is_retried_when_the_connection_was_refused(servers: list[Server]) -> None:
    """Nothing was sent: even a call that must not run twice may be tried again."""
    port = free_port()

    def start_late() -> None:
        time.sleep(0.3)
        servers.append(Server(lambda request, n: answer(request, 201, b"made"), port))

    threading.Thread(target=start_late).start()
    policy = RetryPolicy(attempts=30, backoff=0.05, max_backoff=0.1)
    with make_client(f"http://127.0.0.1:{port}") as http:
        response = policy.run(lambda: http.post("/x", json={}), idempotent=False)
    assert response.status_code == 201
    assert [s.method for s in servers[0].seen] == ["POST"]


def test_attempts_and_stop_bound_the_retrying() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with make_client(url) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            RetryPolicy(attempts=3, backoff=0.1, max_backoff=1).run(
                lambda: http.get("/"), idempotent=True
            )
        assert 0.3 <= time.monotonic() - started < 3  # 0.1 + 0.2 and their jitter
        stop = threading.Event()
        stop.set()
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            RetryPolicy(attempts=5, backoff=10, stop=stop).run(
                lambda: http.get("/"), idempotent=True
            )
        assert time.monotonic() - started < 2


def test_a_status_error_a_call_raises_is_retried_like_an_answer(
    serve: Callable[[Handler], Server],
) -> None:
    server = serve(lambda request, n: answer(request, 503 if n == 0 else 404))

    def call(http: httpx.Client) -> None:
        http.get("/x").raise_for_status()

    with make_client(server.url) as http, pytest.raises(httpx.HTTPStatusError) as raised:
        FAST.run(lambda: call(http), idempotent=True)
    assert raised.value.response.status_code == 404 and len(server.seen) == 2


# -- redirects and credentials ---------------------------------------------------------------


def test_the_token_goes_to_its_own_origin_only(serve: Callable[[Handler], Server]) -> None:
    ours = serve(lambda request, n: answer(request, 200))
    theirs = serve(lambda request, n: answer(request, 200))
    with make_client(ours.url, token="secret") as http:
        http.get("/a")
        http.get(f"{theirs.url}/b")
    assert ours.seen[0].headers.get("Authorization") == "Bearer secret"
    assert "Authorization" not in theirs.seen[0].headers
    assert ours.seen[0].headers["User-Agent"] == "modelplane"


@pytest.mark.parametrize("status", [302, 307])
def test_ranges_are_read_where_the_control_plane_redirects_without_the_token(
    serve: Callable[[Handler], Server], tmp_path: Path, status: int
) -> None:
    store = serve(serve_ranges(DATA))

    def control_plane(request: BaseHTTPRequestHandler, n: int) -> None:
        assert request.path == "/files/w.bin?redirect=true"
        answer(request, status, headers={"Location": f"{store.url}/blob?X-Sig=abc%2Fd"})

    cp = serve(control_plane)
    with make_client(cp.url, token="secret") as http:
        target = downloader(http).to_file(
            "/files/w.bin", tmp_path / "w.bin", size=len(DATA), sha256=sha(DATA)
        )
    assert target.read_bytes() == DATA
    assert cp.seen[0].headers["Authorization"] == "Bearer secret"
    assert len(store.seen) == 6 and all(s.path == "/blob?X-Sig=abc%2Fd" for s in store.seen)
    assert all("Authorization" not in s.headers for s in store.seen)


def test_a_relative_location_is_resolved_against_the_request() -> None:
    request = httpx.Request("GET", "http://cp:8000/api/v1/files/x?redirect=true")
    moved = httpx.Response(307, headers={"Location": "/store/x"}, request=request)
    assert redirect_target(moved) == "http://cp:8000/store/x"
    assert redirect_target(httpx.Response(200, request=request)) is None
    assert redirect_target(httpx.Response(304, request=request)) is None


# -- downloads -------------------------------------------------------------------------------


def downloader(http: httpx.Client, **kwargs: int) -> Downloader:
    settings = {"parallel": 3, "ranged_from": PIECE, "piece": PIECE, **kwargs}
    return Downloader(http, BulkReader(timeout=10), FAST, **settings)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_without_a_redirect_ranges_come_from_the_control_plane_with_the_token(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(serve_ranges(DATA))
    events: list[tuple[str, int]] = []
    with make_client(server.url, token="secret") as http:
        get = downloader(http)
        get.to_file(
            "/f", tmp_path / "a", size=len(DATA), sha256=sha(DATA), progress=_record(events)
        )
        get.to_file("/f", tmp_path / "b", size=len(DATA), sha256=sha(DATA))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == DATA
    ranged = [s for s in server.seen if "Range" in s.headers]
    assert len(ranged) == 12 and all(s.headers["Authorization"] for s in ranged)
    assert len(server.seen) == 13  # one redirect probe: the second file does not ask again
    assert events[0] == ("start", 0) and sum(n for k, n in events if k == "advance") == len(DATA)


def test_a_ranged_download_resumes_from_the_partial_file(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(serve_ranges(DATA))
    (tmp_path / "w.part").write_bytes(DATA[: 3 * PIECE + 5])
    events: list[tuple[str, int]] = []
    with make_client(server.url) as http:
        downloader(http).to_file(
            "/f", tmp_path / "w", size=len(DATA), sha256=sha(DATA), progress=_record(events)
        )
    assert (tmp_path / "w").read_bytes() == DATA and not (tmp_path / "w.part").exists()
    assert events[0] == ("start", 3 * PIECE + 5)
    starts = sorted(s.headers["Range"] for s in server.seen if "Range" in s.headers)
    assert starts[0] == f"bytes={3 * PIECE + 5}-{4 * PIECE + 4}"


def test_an_interrupted_download_leaves_exactly_the_verified_prefix(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(serve_ranges(DATA))
    advances: list[int] = []

    def stop_at_the_second_range(kind: str, nbytes: int) -> None:
        if kind == "advance":
            advances.append(nbytes)
            if len(advances) == 2:
                raise KeyboardInterrupt

    with make_client(server.url) as http, pytest.raises(KeyboardInterrupt):
        downloader(http).to_file(
            "/f",
            tmp_path / "w",
            size=len(DATA),
            sha256=sha(DATA),
            progress=stop_at_the_second_range,
        )
    assert (tmp_path / "w.part").read_bytes() == DATA[: 2 * PIECE]


def test_a_stale_prefix_is_dropped_and_the_download_starts_over_once(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(serve_ranges(DATA[:300_000]))
    (tmp_path / "w.part").write_bytes(b"x" * 1000)
    events: list[tuple[str, int]] = []
    with make_client(server.url) as http:
        downloader(http).to_file(
            "/f", tmp_path / "w", size=300_000, sha256=sha(DATA[:300_000]), progress=_record(events)
        )
    assert (tmp_path / "w").read_bytes() == DATA[:300_000]
    assert [n for k, n in events if k == "start"] == [1000, 0]


def test_a_server_ignoring_the_range_restarts_the_file(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    small = DATA[:300_000]
    server = serve(serve_ranges(small, ignore_range=True))
    (tmp_path / "w.part").write_bytes(small[:1000])
    events: list[tuple[str, int]] = []
    with make_client(server.url) as http:
        downloader(http).to_file(
            "/f", tmp_path / "w", size=len(small), sha256=sha(small), progress=_record(events)
        )
    assert (tmp_path / "w").read_bytes() == small
    assert events[:2] == [("start", 1000), ("advance", -1000)]
    assert sum(n for k, n in events if k == "advance") == len(small) - 1000


def test_bytes_that_do_not_match_are_refused_and_removed(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(serve_ranges(DATA))
    with make_client(server.url) as http, pytest.raises(DigestError, match="0" * 64):
        downloader(http).to_file("/f", tmp_path / "w", size=len(DATA), sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_a_range_whose_connection_drops_is_read_again(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    ranges = serve_ranges(DATA)
    dropped: list[int] = []

    def flaky(request: BaseHTTPRequestHandler, n: int) -> None:
        if "Range" in request.headers and not dropped:
            dropped.append(n)
            request.send_response(206)
            request.send_header("Content-Length", str(PIECE))
            request.end_headers()
            request.wfile.write(b"half")  # then the connection goes away
            drop(request)
            return
        ranges(request, n)

    server = serve(flaky)
    with make_client(server.url) as http:
        downloader(http).to_file("/f", tmp_path / "w", size=len(DATA), sha256=sha(DATA))
    assert (tmp_path / "w").read_bytes() == DATA
    assert dropped and sum("Range" in s.headers for s in server.seen) == 7


def test_a_kept_alive_connection_the_server_closed_is_replaced_without_a_retry(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    ranges = serve_ranges(DATA)

    def closes_silently(request: BaseHTTPRequestHandler, n: int) -> None:
        ranges(request, n)
        request.close_connection = True  # without saying so: the client keeps it for reuse

    server = serve(closes_silently)
    once = RetryPolicy(attempts=1)
    with make_client(server.url) as http:
        get = Downloader(
            http, BulkReader(timeout=10), once, parallel=1, ranged_from=PIECE, piece=PIECE
        )
        get.to_file("/f", tmp_path / "w", size=len(DATA), sha256=sha(DATA))
    assert (tmp_path / "w").read_bytes() == DATA
    assert sum("Range" in s.headers for s in server.seen) == 6


def test_a_refused_range_read_raises_with_the_answer(
    serve: Callable[[Handler], Server], tmp_path: Path
) -> None:
    server = serve(lambda request, n: answer(request, 403 if "Range" in request.headers else 200))
    with make_client(server.url) as http, pytest.raises(httpx.HTTPStatusError) as raised:
        downloader(http).to_file("/f", tmp_path / "w", size=len(DATA), sha256=sha(DATA))
    assert raised.value.response.status_code == 403
    assert (tmp_path / "w.part").stat().st_size == 0


def _record(events: list[tuple[str, int]]) -> Callable[[str, int], None]:
    def record(kind: str, nbytes: int) -> None:
        events.append((kind, nbytes))

    return record
