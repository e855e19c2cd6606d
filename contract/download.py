"""Large downloads, for the SDK's pull and the deployer's cache: a file in parallel ranged
GETs, straight from the object store when the control plane redirects to a presigned URL,
written in place, sha256-checked, resumed from a ``.part`` prefix (`Downloader`), over
`BulkReader`. Retries, redirects and credentials follow `contract.http`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import os
import ssl
import threading
from collections import deque
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import httpx

from contract.http import (
    USER_AGENT,
    RetryPolicy,
    auth_headers,
    describe,
    redirect_target,
    same_origin,
)

if TYPE_CHECKING:
    from hashlib import _Hash

PIECE = 8 * 2**20  # one ranged GET
CHUNK = 2**20  # reads of a streamed download, and its progress granularity
BUFFER = 8 * 2**20  # hashing reads of a resumed prefix
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

# -- bulk reads --------------------------------------------------------------------------


class BulkReader:
    """Ranged GETs of large bodies over the standard library's ``http.client``, kept-alive
    connections pooled per origin. Measured on loopback (8 MiB ranges, hashed and written):
    ~780 MiB/s against ~570 MiB/s through httpx, whose h11 parser copies each 64 KiB read
    several times; ``http.client`` reads a sized body with one ``readinto``. TLS trusts
    what httpx trusts. Errors come out as httpx's, so `RetryPolicy` treats them alike."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.timeout, self.connect_timeout, self.user_agent = timeout, connect_timeout, user_agent
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get_range(self, url: str, start: int, end: int, headers: Mapping[str, str]) -> bytes:
        """Bytes ``start..end`` (inclusive) of ``url``: anything but a 206 of exactly that
        length raises (``httpx.HTTPStatusError``)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        wanted = {"User-Agent": self.user_agent, **headers, "Range": f"bytes={start}-{end}"}
        for fresh in (False, True):
            connection, reused = self._take(key, fresh)
            try:
                if connection.sock is None:
                    self._connect(connection, url)
                connection.request("GET", target, headers=wanted)
                answer = connection.getresponse()
                data = answer.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                # A kept-alive connection the server closed meanwhile: once more, on a new one.
                if not (reused and isinstance(exc, STALE)):
                    raise _read_error(exc, url) from exc
        if answer.will_close:
            connection.close()
        else:
            self._give(key, connection)
        if answer.status != 206 or len(data) != end - start + 1:
            response = httpx.Response(
                answer.status,
                headers=answer.getheaders(),
                content=data,
                request=httpx.Request("GET", url, headers=wanted),
            )
            what = f"range {start}-{end} of {url.split('?')[0]}: {answer.status}, {len(data)} bytes"
            raise httpx.HTTPStatusError(what, request=response.request, response=response)
        return data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connection in itertools.chain.from_iterable(idle.values()):
            connection.close()

    def _take(self, key: tuple[str, str], fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to ``key`` (unless ``fresh``) or a new one; and which it is."""
        if not fresh:
            with self._lock:
                if pooled := self._idle.get(key):
                    return pooled.pop(), True
        scheme, netloc = key
        if scheme == "https":
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                netloc, timeout=self.connect_timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(netloc, timeout=self.connect_timeout)
        return connection, False

    def _give(self, key: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(connection)

    def _connect(self, connection: http.client.HTTPConnection, url: str) -> None:
        try:
            connection.connect()  # sets TCP_NODELAY itself
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {urlsplit(url).netloc}: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connecting to {urlsplit(url).netloc}: {exc}") from exc
        assert connection.sock is not None
        connection.sock.settimeout(self.timeout)


def _read_error(exc: BaseException, url: str) -> httpx.TransportError:
    if isinstance(exc, httpx.TransportError):
        return exc
    where = urlsplit(url).netloc
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(f"reading from {where}: timed out")
    return httpx.ReadError(f"reading from {where}: {describe(exc)}")


# -- downloads ---------------------------------------------------------------------------

Progress = Callable[[Literal["start", "advance"], int], None]


class DigestError(ValueError):
    """A downloaded file is not what was promised; the partial file is gone."""

    def __init__(self, sha256: str, size: int, actual: str, actual_size: int) -> None:
        super().__init__(
            f"expected sha256 {sha256} ({size} bytes), got {actual} ({actual_size} bytes)"
        )
        self.sha256, self.size, self.actual, self.actual_size = sha256, size, actual, actual_size


@dataclass
class Downloader:
    """Files of one control plane (``http``'s base URL and token). A file of at least
    ``ranged_from`` bytes comes as ``parallel`` ranged GETs of ``piece`` bytes in flight,
    read from the object store when the control plane redirects ``?redirect=true`` to a
    presigned URL, else from the control plane; smaller files come in one streamed GET.
    The first answer without a redirect is remembered: the store cannot presign."""

    http: httpx.Client
    bulk: BulkReader
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    parallel: int = 4
    ranged_from: int = PIECE
    piece: int = PIECE
    _presigns: bool = True

    def source(self, url: str) -> str:
        """Where to read ranges of ``url`` (absolute): its presigned URL, or itself."""
        absolute = self.http.build_request("GET", url).url
        if not self._presigns or not same_origin(absolute, self.http.base_url):
            return str(absolute)

        def ask() -> str | None:
            with self.http.stream("GET", url, params={"redirect": "true"}) as answer:
                if (target := redirect_target(answer)) is not None:
                    return target
                if not answer.is_success:
                    answer.read()
                    answer.raise_for_status()
            return None  # the bytes themselves: closed unread

        target = self.policy.run(ask, idempotent=True)
        if target is None:
            self._presigns = False
        return target or str(absolute)

    def pieces(
        self, url: str, size: int, start: int = 0, fd: int | None = None
    ) -> Generator[bytes, None, None]:
        """Bytes ``start..size`` of the file in order. With ``fd`` each piece is also
        written at its offset by the thread that fetched it (writes overlap, as boto3's do);
        once the iterator is closed no write is still in flight."""
        source = self.source(url)
        headers = auth_headers(self.http, source)
        spans = ((o, min(o + self.piece, size) - 1) for o in range(start, size, self.piece))
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="mp-range")
        ahead: deque[Future[bytes]] = deque()
        try:
            for span in itertools.islice(spans, self.parallel):
                ahead.append(pool.submit(self._piece, source, headers, fd, *span))
            while ahead:
                data = ahead.popleft().result()
                if (following := next(spans, None)) is not None:
                    ahead.append(pool.submit(self._piece, source, headers, fd, *following))
                yield data
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _piece(
        self, url: str, headers: dict[str, str], fd: int | None, start: int, end: int
    ) -> bytes:
        data = self.policy.run(
            lambda: self.bulk.get_range(url, start, end, headers), idempotent=True
        )
        if fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, start + len(data) - len(view)) :]
        return data

    def to_file(
        self, url: str, target: Path, *, size: int, sha256: str, progress: Progress | None = None
    ) -> Path:
        """``target``, verified. Bytes land in ``target.part`` first, which is always a
        prefix of the file (resumed from its end next time); a prefix that turns out not to
        be this file's is dropped and the download starts over, once."""
        emit = progress or _no_progress
        partial = target.with_name(target.name + ".part")
        if partial.exists() and partial.stat().st_size > size:
            partial.unlink()
        resumed = partial.exists() and partial.stat().st_size > 0
        while True:
            digest = self._fill(url, partial, size, emit)
            got = partial.stat().st_size
            if digest == sha256 and got == size:
                break
            partial.unlink()
            if resumed:
                resumed = False
                continue
            raise DigestError(sha256, size, digest, got)
        os.replace(partial, target)
        return target

    def _fill(self, url: str, partial: Path, size: int, emit: Progress) -> str:
        """The sha256 of ``partial`` once it holds the file (or what the server sent)."""
        if size >= self.ranged_from:
            return self._ranged(url, partial, size, emit)  # each piece retried by itself
        return self.policy.run(lambda: self._streamed(url, partial, size, emit), idempotent=True)

    def _ranged(self, url: str, partial: Path, size: int, emit: Progress) -> str:
        digest, have = _hash_prefix(partial)
        emit("start", have)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        done = have
        try:
            os.ftruncate(fd, have)
            with contextlib.closing(self.pieces(url, size, have, fd)) as pieces:
                for data in pieces:
                    digest.update(data)
                    done += len(data)
                    emit("advance", len(data))
        finally:
            os.ftruncate(fd, done)  # whatever happened, a prefix hashed in order
            os.close(fd)
        return digest.hexdigest()

    def _streamed(self, url: str, partial: Path, size: int, emit: Progress) -> str:
        digest, have = _hash_prefix(partial)
        emit("start", have)
        if partial.exists() and have >= size:
            return digest.hexdigest()
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.http.stream("GET", url, headers=headers) as answer:
            if not answer.is_success:
                answer.read()
                answer.raise_for_status()
            if answer.status_code != 206 and have:  # the range was ignored: start over
                emit("advance", -have)
                have, digest = 0, hashlib.sha256()
            with partial.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                for chunk in answer.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    emit("advance", len(chunk))
        return digest.hexdigest()


def _hash_prefix(partial: Path) -> tuple[_Hash, int]:
    digest = hashlib.sha256()
    if not partial.exists():
        return digest, 0
    with partial.open("rb") as file:
        while block := file.read(BUFFER):
            digest.update(block)
    return digest, partial.stat().st_size


def _no_progress(kind: Literal["start", "advance"], nbytes: int) -> None:
    pass
