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
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote

import httpx

from client.errors import (
    Conflict,
    ConnectionFailed,
    DigestMismatch,
    ModelplaneError,
    ServerError,
    from_response,
)
from client.transport import API, Transport
from contract.download import DigestError, Downloader
from contract.enums import VersionStatus
from contract.http import describe
from contract.schemas import FileOut, MultipartOut, VersionOut, check_path

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
        # One bounded pool for everything: the parts of every large file (a sharded model's
        # shards) and the small files go at once, `concurrency` requests in flight in all.
        jobs: list[Callable[[], None]] = []
        completions: list[Callable[[], None]] = []
        for f, source in todo:
            if f.upload is not None and f.upload.multipart is not None:
                if (planned := self.plan_multipart(f, source)) is not None:
                    jobs += planned[0]
                    completions.append(planned[1])
            else:
                jobs.append(lambda f=f, s=source: self.put(f, s))  # type: ignore[misc]
        self.run_all(jobs)
        self.run_all(completions)

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
        """The proxied upload: the file streamed as the body of one PUT, sent again from
        the start (progress rewound) when the policy retries it."""
        assert f.upload is not None
        upload = f.upload
        self.emit(TransferEvent("start", f.path, f.size))
        sent = [0]

        def attempt() -> httpx.Response:
            if sent[0]:
                self.emit(TransferEvent("advance", f.path, f.size, -sent[0]))
                sent[0] = 0
            return self.transport.http.request(
                "PUT",
                upload.url,
                content=self._read(source.source, 0, f.size, f.path, sent),
                headers={
                    "Content-Length": str(f.size),
                    "Content-Type": "application/octet-stream",
                },
            )

        self.transport.send(attempt, idempotent=True, stop=self._stop)
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

    def plan_multipart(
        self, f: FileOut, source: LocalFile
    ) -> tuple[list[Callable[[], None]], Callable[[], None]] | None:
        """Direct upload: presigned part URLs, the parts S3 already holds skipped; returns the
        jobs sending the rest (run in parallel by the caller) and the completion, where the
        control plane assembles and verifies the object. None: nothing to send."""
        assert f.upload is not None and f.upload.multipart is not None
        url = f.upload.multipart.url
        try:
            answer = self.transport.json("POST", url, idempotent=True)  # again: resumes it
        except Conflict:
            # Stored meanwhile (another push of the same bytes), or the version is no
            # longer pending: either way finalize says where things stand.
            self.emit(TransferEvent("skip", f.path, f.size))
            return None
        offer = MultipartOut.model_validate(answer)
        size, part_size = f.size, offer.part_size

        def length(n: int) -> int:
            return min(part_size, size - (n - 1) * part_size)

        done = {p.part_number for p in offer.completed_parts if p.size == length(p.part_number)}
        already = sum(length(n) for n in done)
        self.emit(TransferEvent("start", f.path, size, already))
        missing = [p for p in offer.parts if p.part_number not in done]
        jobs: list[Callable[[], None]] = [
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

        def complete() -> None:
            self.transport.request("POST", f"{url}/complete", idempotent=True)
            self.emit(TransferEvent("done", f.path, size))

        return jobs, complete

    def put_part(
        self, path: str, source: LocalFile, url: str, number: int, offset: int, length: int
    ) -> None:
        with source.source.open("rb") as file:
            data = os.pread(file.fileno(), length, offset)
        if len(data) != length:
            raise ModelplaneError(f"{source.source} shrank while it was being uploaded")
        self.transport.send(  # a presigned URL: our token is not sent to the store
            lambda: self.transport.http.put(
                url, content=data, headers={"Content-Length": str(length)}
            ),
            idempotent=True,
            stop=self._stop,
            failing=f"part {number} of {path!r}",
        )
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
    """One pull: files of at least ``RANGE`` bytes come in ``concurrency`` parallel ranged
    GETs, from the store itself when it offers presigned URLs (S3), written and hashed in
    order, so the ``.part`` file is always a prefix and resumes like a streamed one."""

    transport: Transport
    hook: ProgressHook | None = None
    concurrency: int = 4
    ranged_from: int = RANGE

    def __post_init__(self) -> None:
        self._downloader = Downloader(
            self.transport.http,
            self.transport.bulk,
            self.transport.policy,
            parallel=self.concurrency,
            ranged_from=self.ranged_from,
            piece=RANGE,
        )

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
        url = f"{version_path(model, version)}/files/{quote(f.path)}"

        def progress(kind: Literal["start", "advance"], nbytes: int) -> None:
            self.emit(TransferEvent(kind, f.path, f.size, nbytes))

        try:
            self._downloader.to_file(url, target, size=f.size, sha256=f.sha256, progress=progress)
        except DigestError as exc:
            raise DigestMismatch(f"{f.path!r}: {exc}; the partial file was removed") from None
        except httpx.HTTPStatusError as exc:
            if exc.response.is_success:  # a range read answered with something else
                raise ServerError(f"downloading {f.path!r}: {exc}") from None
            raise from_response(exc.response) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"downloading {f.path!r}: {describe(exc)}") from exc
        self.emit(TransferEvent("done", f.path, f.size))
        return target
