"""A content-addressed, size-bounded local cache of artifact files.

Blobs live at `root/blobs/sha256/<hex>`: a file is downloaded once per machine whatever
versions or deployments refer to it. A download streams into a temporary file in the same
directory while hashing and is renamed into place only when its sha256 matches, so a blob
present under its name is always whole and right. Replicas see their files through
`root/replicas/<id>/<path>` hardlinks, which is the `--path` of their serving process.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from contract.formats import Artifact, FormatError, artifact
from deployer.contract import Assignment, FileRef

log = logging.getLogger("deployer.cache")

# Opens a file's download as an iterator of chunks; raises on HTTP errors.
Fetch = Callable[[FileRef], Iterator[bytes]]

WRITE_AHEAD = 8  # chunks hashed but not yet written (at most 8 ranged pieces: 64 MiB)
WRITERS = 4
FILES_AT_ONCE = 4  # a version's files pulled in parallel (a sharded model's shards)
DISK_MARGIN = 64 * 1024  # the filesystem's own blocks: a file needs a little more than its size


class CacheError(Exception):
    """A file could not be brought into the cache (digest mismatch, no room, bad path)."""


class DigestMismatch(CacheError):
    def __init__(self, ref: FileRef, actual: str) -> None:
        super().__init__(
            f"sha256 mismatch for {ref.path}: expected {ref.sha256}, got {actual}; nothing kept"
        )


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = root / "blobs" / "sha256"
        self.replicas = root / "replicas"
        self.stamps = root / "verified"  # per blob: what it looked like when it was hashed
        self._room = threading.Lock()  # room is made for one download at a time...
        self._inflight = 0  # ...counting the bytes of those under way
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.replicas.mkdir(parents=True, exist_ok=True)
        self.stamps.mkdir(parents=True, exist_ok=True)
        self._sweep_temporaries()

    def blob(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise CacheError(f"not a sha256 hex digest: {digest!r}")
        return self.blobs / digest

    def has(self, ref: FileRef) -> bool:
        """True when the blob is cached whole; a size mismatch drops it (a truncated copy)."""
        path = self.blob(ref.sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size != ref.size:
            log.warning("blob %s has %d bytes, expected %d: dropped", ref.sha256, size, ref.size)
            path.unlink(missing_ok=True)
            self._stamp(ref.sha256).unlink(missing_ok=True)
            return False
        vouched = self.verified(ref)
        os.utime(path)  # recently used: last to be evicted
        if vouched:
            self._stamp(ref.sha256).write_text(_stat_key(path))
        return True

    def ensure(self, ref: FileRef, fetch: Fetch, pinned: Iterable[str] = ()) -> tuple[Path, bool]:
        """The blob of `ref`, downloaded unless cached; returns (path, downloaded). A disk
        that fills up during the download (something else writes there too) gets the blobs
        no replica uses evicted and one more try, then a `CacheError` saying so."""
        if self.has(ref):
            return self.blob(ref.sha256), False
        keep = set(pinned) | {ref.sha256}
        with self._room:
            self._make_room(ref.size, keep, self._inflight)
            self._inflight += ref.size
        try:
            return self._download_evicting(ref, fetch, keep)
        finally:
            with self._room:
                self._inflight -= ref.size

    def ensure_all(
        self, refs: list[FileRef], fetch: Fetch, pinned: Iterable[str] = ()
    ) -> list[tuple[Path, bool]]:
        """`ensure` for each of a version's files, `FILES_AT_ONCE` downloading at a time
        (each streamed into the cache and verified by itself); the first failure is raised
        once those under way end, and no other starts."""
        unique = list({ref.sha256: ref for ref in refs}.values())  # the same bytes twice
        keep = set(pinned) | {ref.sha256 for ref in unique}
        failed = threading.Event()

        def one(ref: FileRef) -> tuple[Path, bool]:
            if failed.is_set():
                raise CacheError(f"{ref.path}: not pulled, another file failed")
            try:
                return self.ensure(ref, fetch, keep)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(FILES_AT_ONCE, thread_name_prefix="pull-file") as pool:
            futures = {ref.sha256: pool.submit(one, ref) for ref in unique}
            done = {digest: future.result() for digest, future in futures.items()}
        return [done[ref.sha256] for ref in refs]

    def _download_evicting(self, ref: FileRef, fetch: Fetch, keep: set[str]) -> tuple[Path, bool]:
        try:
            return self._download(ref, fetch), True
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            log.warning("disk full while downloading %s: evicting unused blobs", ref.sha256)
        with self._room:
            self._evict_for_disk(ref.size, keep)
        try:
            return self._download(ref, fetch), True
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise CacheError(
                f"disk full: no room for {ref.path} ({ref.size} bytes) in {self.blobs} "
                "even after evicting every blob no replica uses; nothing kept"
            ) from exc

    def _download(self, ref: FileRef, fetch: Fetch) -> Path:
        target = self.blob(ref.sha256)
        fd, temp_name = tempfile.mkstemp(prefix=".part-", dir=self.blobs)
        temp = Path(temp_name)
        try:
            try:
                digest = _hash_and_write(fetch(ref), fd)
            finally:
                os.close(fd)
            if digest.hexdigest() != ref.sha256:
                raise DigestMismatch(ref, digest.hexdigest())
            os.replace(temp, target)
            self._stamp(ref.sha256).write_text(_stat_key(target))
        finally:
            temp.unlink(missing_ok=True)
        return target

    def verified(self, ref: FileRef) -> bool:
        """The blob is the one this cache hashed when it pulled it: same inode, size and
        mtime as then (a write changes its mtime; the links of replica directories do not),
        so it need not be hashed again before loading."""
        try:
            return self._stamp(ref.sha256).read_text() == _stat_key(self.blob(ref.sha256))
        except OSError:
            return False

    def _stamp(self, digest: str) -> Path:
        return self.stamps / digest

    def materialise(self, assignment: Assignment) -> Path:
        """`replicas/<id>/` with each file linked to its blob; returns the serving `--path`."""
        directory = self.replicas / _safe_name(assignment.replica_id)
        shutil.rmtree(directory, ignore_errors=True)
        for ref in assignment.files:
            link = (directory / ref.path).resolve()
            if not link.is_relative_to(directory.resolve()):
                raise CacheError(f"file path {ref.path!r} escapes the replica directory")
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blob(ref.sha256), link)
            except OSError:
                link.symlink_to(self.blob(ref.sha256))
        return serving_path(directory, assignment)

    def release(self, replica_id: str) -> None:
        shutil.rmtree(self.replicas / _safe_name(replica_id), ignore_errors=True)

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.blobs.iterdir() if not p.name.startswith("."))

    def _make_room(self, size: int, keep: set[str], inflight: int = 0) -> None:
        if size > self.max_bytes:
            raise CacheError(
                f"file of {size} bytes exceeds the cache limit of {self.max_bytes} bytes "
                "(raise --cache-max-bytes)"
            )
        blobs = sorted(
            (p for p in self.blobs.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        used = sum(p.stat().st_size for p in blobs) + inflight
        for path in blobs:
            if used + size <= self.max_bytes:
                break
            if path.name in keep:
                continue
            used -= path.stat().st_size
            log.info("evicting blob %s (%d bytes) to make room", path.name, path.stat().st_size)
            path.unlink(missing_ok=True)
            self._stamp(path.name).unlink(missing_ok=True)
        if used + size > self.max_bytes:
            raise CacheError(
                f"cache full: {size} bytes needed, {used} of {self.max_bytes} bytes held by "
                "blobs of running replicas"
            )
        self._evict_for_disk(size, keep)

    def _evict_for_disk(self, size: int, keep: set[str]) -> None:
        """Evict blobs no replica uses, least recently used first, until the disk has room
        for `size` more bytes (the size bound may allow more than the disk holds)."""
        blobs = sorted(
            (p for p in self.blobs.iterdir() if not p.name.startswith(".") and p.name not in keep),
            key=lambda p: p.stat().st_mtime,
        )
        free = shutil.disk_usage(self.blobs).free
        for path in blobs:
            if size <= free - DISK_MARGIN:
                return
            log.info("evicting blob %s: the disk is full", path.name)
            path.unlink(missing_ok=True)
            self._stamp(path.name).unlink(missing_ok=True)
            free = shutil.disk_usage(self.blobs).free
        if size > free - DISK_MARGIN:
            raise CacheError(
                f"disk full: {size} bytes needed, {free} bytes free in {self.blobs} after "
                "evicting every blob no replica uses"
            )

    def _sweep_temporaries(self) -> None:
        """Partial downloads and replica directories of a worker that died: a new worker
        process runs no replica yet (its predecessor's processes died with it)."""
        for path in self.blobs.glob(".part-*"):
            path.unlink(missing_ok=True)
        for path in self.replicas.iterdir():
            shutil.rmtree(path, ignore_errors=True)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


def _hash_and_write(chunks: Iterator[bytes], fd: int) -> Any:
    """Hash the chunks in order here while threads write them at their offsets: download,
    hashing and disk overlap instead of taking turns (all release the GIL on large buffers),
    and at most ``WRITE_AHEAD`` chunks wait for the disk."""
    digest = hashlib.sha256()
    room = threading.BoundedSemaphore(WRITE_AHEAD)
    writes: list[Future[None]] = []

    def write(chunk: bytes, offset: int) -> None:
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.pwrite(fd, view, offset + (len(chunk) - len(view))) :]
        finally:
            room.release()

    offset = 0
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="blob-writer") as pool:
        for chunk in chunks:
            digest.update(chunk)
            room.acquire()
            writes.append(pool.submit(write, chunk, offset))
            offset += len(chunk)
            while writes and writes[0].done():
                writes.pop(0).result()  # a failed write stops the download
    for future in writes:
        future.result()
    return digest


def serving_path(directory: Path, assignment: Assignment) -> Path:
    """The version's lone file where its format's layout says so (`contract.formats`: a
    TorchScript, export or ONNX file alone), else its directory (safetensors, SavedModel,
    a graph with external data or labels)."""
    if _single_file(assignment):
        return directory / assignment.files[0].path
    return directory


def sha256_args(assignment: Assignment) -> list[str]:
    """`--sha256` values matching `serving_path`: HEX for one file, RELPATH=HEX per file."""
    if _single_file(assignment):
        return [assignment.files[0].sha256]
    return [f"{ref.path}={ref.sha256}" for ref in assignment.files]


def _single_file(assignment: Assignment) -> bool:
    if assignment.format is None or len(assignment.files) != 1:
        return False
    try:
        found: Artifact | None = artifact(assignment.format, assignment.files)
    except FormatError:  # the registry checked it; served as a directory, the runtime says why
        return False
    return found is not None and found.single_file


def _safe_name(replica_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in replica_id)
