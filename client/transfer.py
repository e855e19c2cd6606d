"""Moving bytes: hashing local files, pushing a version (proxied PUTs for small files,
presigned multipart for large ones, resumed where an earlier push stopped) and pulling
one back (sha256-verified, resumed with ``Range``).

A push is resumable because everything it needs is derivable on the server: a pending
version with the same manifest (paths, sizes, digests), format and signature is the one
an interrupted push created, so it is continued rather than a new one started; files it
already has are ``present``; and asking for a file's multipart upload again answers the
same upload with ``completed_parts``, so only the missing parts are sent.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote

import httpx
import urllib3

from client.errors import (
    Conflict,
    ConnectionFailed,
    DigestMismatch,
    ModelplaneError,
    ServerError,
    from_response,
)
from client.transport import API, Transport
from contract.schemas import FileOut, MultipartOut, VersionOut, VersionStatus, check_path

BUFFER = 8 * 2**20  # hashing reads; hashlib releases the GIL on buffers this size
RANGE = 8 * 2**20  # ranged GETs of a pull straight from the store
CHUNK = 2**20  # progress granularity of uploads and downloads

Kind = Literal["hashing", "hashed", "skip", "start", "advance", "part", "done"]


@dataclass(frozen=True)
class TransferEvent:
    """One step of a push or pull, for progress displays.

    ``hashing``: ``nbytes`` more of a local file hashed. ``hashed``: its digest is known.
    ``skip``: nothing to move (the store or ``dest`` has it). ``start``: the file will
    move; ``nbytes`` of it are already there (resumed). ``advance``: ``nbytes`` more moved
    (negative when a retry rewinds). ``part``: multipart part ``part`` is stored.
    ``done``: the file is complete."""

    kind: Kind
    path: str
    size: int
    nbytes: int = 0
    part: int | None = None


ProgressHook = Callable[[TransferEvent], None]


@dataclass(frozen=True)
class LocalFile:
    path: str  # inside the version
    source: Path
    size: int
    sha256: str


PathSource = str | os.PathLike[str]
Files = PathSource | Mapping[str, PathSource] | Sequence[PathSource]


def collect(files: Files) -> list[tuple[str, Path]]:
    """``(path in the version, local file)`` pairs: a file (named by its basename), a
    directory (every file under it, relative paths), a list of files, or a mapping."""
    if isinstance(files, Mapping):
        pairs = [(str(k), Path(v)) for k, v in files.items()]
    elif isinstance(files, str | os.PathLike):
        root = Path(files)
        if root.is_dir():
            pairs = [
                (p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()
            ]
            if not pairs:
                raise ModelplaneError(f"{root} holds no files")
        else:
            pairs = [(root.name, root)]
    else:
        pairs = [(Path(p).name, Path(p)) for p in files]
    for name, local in pairs:
        if not local.is_file():
            raise ModelplaneError(f"{local}: no such file")
        try:
            check_path(name)
        except ValueError as exc:
            raise ModelplaneError(f"{name!r}: {exc}") from None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ModelplaneError("two files would have the same path in the version")
    if not pairs:
        raise ModelplaneError("nothing to push")
    return pairs


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return digest.hexdigest()


def hash_files(pairs: list[tuple[str, Path]], emit: ProgressHook) -> list[LocalFile]:
    """Digests of every file, a few at a time in threads."""

    def one(pair: tuple[str, Path]) -> LocalFile:
        name, source = pair
        size = source.stat().st_size
        digest = file_sha256(source, lambda n: emit(TransferEvent("hashing", name, size, n)))
        emit(TransferEvent("hashed", name, size))
        return LocalFile(name, source, size, digest)

    with ThreadPoolExecutor(min(4, len(pairs)), thread_name_prefix="mp-hash") as pool:
        return list(pool.map(one, pairs))


def version_path(model: str, selector: str | int) -> str:
    return f"{API}/models/{model}/versions/{quote(str(selector), safe='@')}"


@dataclass
class Pusher:
    """One push: plan, upload what is missing, in parallel; hook calls are serialised."""

    transport: Transport
    hook: ProgressHook | None = None
    concurrency: int = 4
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: TransferEvent) -> None:
        if self.hook is not None:
            with self._lock:
                self.hook(event)

    # -- finding what an interrupted push left --------------------------------------------

    def find_pending(
        self, model: str, local: list[LocalFile], fmt: str | None, signature: Any
    ) -> VersionOut | None:
        wanted = {(f.path, f.size, f.sha256) for f in local}
        params = {"status": "pending", "limit": 50}
        page = self.transport.json("GET", f"{API}/models/{model}/versions", params=params)
        for item in page["items"]:
            if item["format"] != fmt:
                continue
            version = VersionOut.model_validate(
                self.transport.json("GET", version_path(model, item["version"]))
            )
            have = {(f.path, f.size, f.sha256) for f in version.files}
            if have == wanted and version.signature == signature:
                return version
        return None

    # -- uploads -------------------------------------------------------------------------

    def upload_missing(self, version: VersionOut, local: list[LocalFile]) -> None:
        by_path = {f.path: f for f in local}
        todo: list[tuple[FileOut, LocalFile]] = []
        for f in version.files:
            if f.present or f.upload is None:
                self.emit(TransferEvent("skip", f.path, f.size))
            else:
                todo.append((f, by_path[f.path]))
        for f, source in todo:
            if f.upload is not None and f.upload.multipart is not None:
                self.multipart(f, source)
        small = [(f, s) for f, s in todo if f.upload is not None and f.upload.multipart is None]
        self.run_all([lambda f=f, s=s: self.put(f, s) for f, s in small])  # type: ignore[misc]

    def run_all(self, jobs: list[Callable[[], None]]) -> None:
        """Run ``jobs`` in parallel. The first failure (or Ctrl-C) stops the rest: none is
        started after it, those in flight finish; then it is raised."""
        if not jobs:
            return
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mp-upload")
        try:
            futures: list[Future[None]] = [pool.submit(self._guarded, job) for job in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and (error := future.exception()) is not None:
                    raise error
        except BaseException:
            self._stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _guarded(self, job: Callable[[], None]) -> None:
        if not self._stop.is_set():
            job()

    def put(self, f: FileOut, source: LocalFile) -> None:
        """The proxied upload: the file streamed as the body of one PUT."""
        assert f.upload is not None
        self.emit(TransferEvent("start", f.path, f.size))
        attempt = 0
        while True:
            sent = [0]
            try:
                self.transport.request(
                    "PUT",
                    f.upload.url,
                    idempotent=False,  # a streamed body: retried here, from the start
                    content=self._read(source.source, 0, f.size, f.path, sent),
                    headers={
                        "Content-Length": str(f.size),
                        "Content-Type": "application/octet-stream",
                    },
                )
                break
            except (ConnectionFailed, ServerError):
                if attempt >= self.transport.retries or self._stop.is_set():
                    raise
                self.emit(TransferEvent("advance", f.path, f.size, -sent[0]))
                self.transport.sleep(attempt, None)
                attempt += 1
        self.emit(TransferEvent("done", f.path, f.size))

    def _read(
        self, source: Path, offset: int, length: int, path: str, sent: list[int]
    ) -> Iterator[bytes]:
        with source.open("rb") as file:
            file.seek(offset)
            left = length
            while left > 0:
                chunk = file.read(min(CHUNK, left))
                if not chunk:
                    raise ModelplaneError(f"{source} shrank while it was being uploaded")
                left -= len(chunk)
                yield chunk
                sent[0] += len(chunk)
                self.emit(TransferEvent("advance", path, length, len(chunk)))

    def multipart(self, f: FileOut, source: LocalFile) -> None:
        """Direct upload: presigned part URLs, the parts S3 already holds skipped, the rest
        sent in parallel, then the control plane assembles and verifies the object."""
        assert f.upload is not None and f.upload.multipart is not None
        url = f.upload.multipart.url
        try:
            answer = self.transport.json("POST", url, idempotent=True)  # again: resumes it
        except Conflict:
            # Stored meanwhile (another push of the same bytes), or the version is no
            # longer pending: either way finalize says where things stand.
            self.emit(TransferEvent("skip", f.path, f.size))
            return
        offer = MultipartOut.model_validate(answer)
        size, part_size = f.size, offer.part_size

        def length(n: int) -> int:
            return min(part_size, size - (n - 1) * part_size)

        done = {p.part_number for p in offer.completed_parts if p.size == length(p.part_number)}
        already = sum(length(n) for n in done)
        self.emit(TransferEvent("start", f.path, size, already))
        missing = [p for p in offer.parts if p.part_number not in done]
        self.run_all(
            [
                lambda p=p: self.put_part(  # type: ignore[misc]
                    f.path,
                    source,
                    p.url,
                    p.part_number,
                    (p.part_number - 1) * part_size,
                    length(p.part_number),
                )
                for p in missing
            ]
        )
        self.transport.request("POST", f"{url}/complete", idempotent=True)
        self.emit(TransferEvent("done", f.path, size))

    def put_part(
        self, path: str, source: LocalFile, url: str, number: int, offset: int, length: int
    ) -> None:
        with source.source.open("rb") as file:
            data = os.pread(file.fileno(), length, offset)
        if len(data) != length:
            raise ModelplaneError(f"{source.source} shrank while it was being uploaded")
        attempt = 0
        while True:
            try:
                response = self.transport.bare.put(
                    url, content=data, headers={"Content-Length": str(length)}
                )
            except httpx.TransportError as exc:
                response, error = None, exc
            if response is not None and response.is_success:
                break
            refused = response is not None and response.status_code < 500  # e.g. URL expired
            if refused or attempt >= self.transport.retries or self._stop.is_set():
                if response is not None:
                    raise from_response(response)
                raise ConnectionFailed(f"part {number} of {path!r}: {error}") from error
            self.transport.sleep(attempt, None)
            attempt += 1
        self.emit(TransferEvent("advance", path, source.size, length))
        self.emit(TransferEvent("part", path, source.size, length, part=number))

    def finalize(self, model: str, version: int) -> VersionOut:
        try:
            answer = self.transport.json(
                "POST", f"{version_path(model, version)}/finalize", idempotent=True
            )
        except Conflict:
            # A retried finalize whose first answer was lost finds the version ready.
            answer = self.transport.json("GET", version_path(model, version))
            if answer["status"] != VersionStatus.ready:
                raise
        return VersionOut.model_validate(answer)


# -- pull ----------------------------------------------------------------------------------


def safe_target(dest: Path, path: str) -> Path:
    """Where a version's file lands under ``dest``; never outside it."""
    check_path(path)
    target = dest.joinpath(*PurePosixPath(path).parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ModelplaneError(f"{path!r} would be written outside {dest}")
    return target


@dataclass
class Puller:
    """Files at least ``ranged_from`` bytes are fetched from the store itself when it offers
    presigned URLs (S3): ``concurrency`` ranged GETs in flight, written and hashed in order,
    so the ``.part`` file is always a prefix and resumes like a streamed one."""

    transport: Transport
    hook: ProgressHook | None = None
    concurrency: int = 4
    ranged_from: int = RANGE
    _presigns: bool = True  # False once the store answered without a redirect

    def emit(self, event: TransferEvent) -> None:
        if self.hook is not None:
            self.hook(event)

    def download(self, model: str, version: int, f: FileOut, dest: Path) -> Path:
        """``dest/path``, verified; an existing ``.part`` file is continued from its end."""
        target = safe_target(dest, f.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.stat().st_size == f.size and file_sha256(target) == f.sha256:
            self.emit(TransferEvent("skip", f.path, f.size))
            return target
        partial = target.with_name(target.name + ".part")
        if partial.exists() and partial.stat().st_size > f.size:
            partial.unlink()
        url = f"{version_path(model, version)}/files/{quote(f.path)}"
        resumed = partial.exists() and partial.stat().st_size > 0
        while True:
            digest = self._fetch_with_retries(url, partial, f)
            size = partial.stat().st_size
            if digest == f.sha256 and size == f.size:
                break
            partial.unlink()
            if resumed:  # a stale .part (another file's bytes): start over once
                resumed = False
                continue
            raise DigestMismatch(
                f"{f.path!r}: expected sha256 {f.sha256} ({f.size} bytes), "
                f"got {digest} ({size} bytes); the partial file was removed"
            )
        os.replace(partial, target)
        self.emit(TransferEvent("done", f.path, f.size))
        return target

    def _fetch_with_retries(self, url: str, partial: Path, f: FileOut) -> str:
        """The sha256 of ``partial`` once it holds the whole file (hashed as it arrives;
        a prefix left by an earlier attempt is hashed first)."""
        attempt = 0
        while True:
            digest = hashlib.sha256()
            have = 0
            if partial.exists():
                have = partial.stat().st_size
                with partial.open("rb") as file:
                    while block := file.read(BUFFER):
                        digest.update(block)
            self.emit(TransferEvent("start", f.path, f.size, have))
            try:
                if have < f.size or not partial.exists():
                    direct = self._presigned(url) if f.size >= self.ranged_from else None
                    if direct is not None:
                        self._fetch_ranges(direct, partial, have, f, digest)
                    else:
                        digest = self._fetch(url, partial, have, f, digest)
                return digest.hexdigest()
            except (ConnectionFailed, ServerError):
                if attempt >= self.transport.retries:
                    raise
                self.transport.sleep(attempt, None)
                attempt += 1

    def _presigned(self, url: str) -> str | None:
        """A presigned URL of the file's bytes in the store, or ``None`` (folder store)."""
        if not self._presigns:
            return None
        params = {"redirect": "true"}
        try:
            with self.transport.http.stream("GET", url, params=params) as response:
                if response.status_code == 307 and "location" in response.headers:
                    return response.headers["location"]
                if not response.is_success:
                    response.read()
                    raise from_response(response)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.transport.url}: {exc}") from exc
        self._presigns = False  # closing the answer unread drops its body
        return None

    def _fetch_ranges(self, url: str, partial: Path, have: int, f: FileOut, digest: Any) -> None:
        """Ranges are written where they belong by the threads that fetch them (as boto3
        does: writes overlap), hashed in order here; whatever happens, the file is cut back
        to the prefix hashed so far, so it stays a resumable prefix."""
        spans = iter((o, min(o + RANGE, f.size) - 1) for o in range(have, f.size, RANGE))
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mp-pull")
        ahead: deque[Future[bytes]] = deque()
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        done = have
        try:
            os.ftruncate(fd, have)
            for span in itertools.islice(spans, self.concurrency):
                ahead.append(pool.submit(self._get_range, url, fd, *span))
            while ahead:
                data = ahead.popleft().result()
                digest.update(data)
                done += len(data)
                self.emit(TransferEvent("advance", f.path, f.size, len(data)))
                if (following := next(spans, None)) is not None:
                    ahead.append(pool.submit(self._get_range, url, fd, *following))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            os.ftruncate(fd, done)
            os.close(fd)

    def _get_range(self, url: str, fd: int, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end}"}
        try:
            response = self.transport.store.request("GET", url, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionFailed(f"reading the store: {exc}") from exc
        data: bytes = response.data
        if response.status != 206 or len(data) != end - start + 1:
            if 200 <= response.status < 300:
                raise ServerError(f"the store answered {response.status} to a range read")
            raise from_response(
                httpx.Response(response.status, headers=dict(response.headers), content=data)
            )
        os.pwrite(fd, data, start)
        return data

    def _fetch(self, url: str, partial: Path, have: int, f: FileOut, digest: Any) -> Any:
        """Append the rest of the file to ``partial``; the digest updated (or a new one
        when the server sent the whole file again)."""
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self.transport.http.stream("GET", url, headers=headers) as response:
                if not response.is_success:
                    response.read()
                    raise from_response(response)
                if response.status_code != 206 and have:  # range ignored: start over
                    self.emit(TransferEvent("advance", f.path, f.size, -have))
                    have = 0
                    digest = hashlib.sha256()
                with partial.open("r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        self.emit(TransferEvent("advance", f.path, f.size, len(chunk)))
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"downloading {f.path!r}: {exc}") from exc
        return digest
