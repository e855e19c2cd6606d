"""Artifacts in a local folder: the embedded default, and the tests' real double for S3."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from storage.base import (
    ArtifactNotFound,
    DigestMismatch,
    ObjectInfo,
    StorageError,
    StorageUnavailable,
    StoredObject,
)

CHUNK = 1024 * 1024
READ_CHUNK = 4 * CHUNK  # pieces of chunks(): fewer thread hops per byte when streaming
# Temporary files live beside their final path so os.replace is atomic; list() skips them.
TEMP_PREFIX = ".mp-tmp-"


def _unavailable(what: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"local artifact store: {what} failed: {exc}")


class RangeReader(io.RawIOBase):
    """Reads at most ``remaining`` bytes of an open file, turning ``OSError`` into ours."""

    def __init__(self, file: BinaryIO, remaining: int | None, key: str) -> None:
        self._file, self._remaining, self._key = file, remaining, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._remaining is not None:
            view = view[: self._remaining]
        if not len(view):
            return 0
        try:
            n = self._file.readinto(view)  # type: ignore[attr-defined]
        except OSError as exc:
            raise _unavailable(f"reading {self._key!r}", exc) from exc
        if self._remaining is not None:
            self._remaining -= n
        return int(n)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


class FileSystemBlobWriter:
    """Writes to a temporary file beside the final path; ``commit`` renames it into place."""

    def __init__(self, final: Path, key: str) -> None:
        self._final, self._key = final, key
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX)
        except OSError as exc:
            raise _unavailable(f"creating a temporary file for {key!r}", exc) from exc
        self._temp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes | bytearray) -> None:
        if self._done:
            raise StorageError(f"writer for {self._key!r} is already closed")
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            raise _unavailable(f"writing {self._key!r}", exc) from exc
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> StoredObject:
        if self._done:
            raise StorageError(f"writer for {self._key!r} is already closed")
        digest = self._hash.hexdigest()
        if (expected_sha256 is not None and expected_sha256 != digest) or (
            expected_size is not None and expected_size != self._size
        ):
            self.abort()
            raise DigestMismatch(
                expected_sha256=expected_sha256 or digest,
                actual_sha256=digest,
                expected_size=expected_size,
                actual_size=self._size,
            )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._final)
        except OSError as exc:
            self.abort()
            raise _unavailable(f"publishing {self._key!r}", exc) from exc
        self._done = True
        _fsync_dir(self._final.parent)
        return StoredObject(key=self._key, size=self._size, sha256=digest)

    def abort(self) -> None:
        self._done = True
        self._file.close()
        self._temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; some filesystems refuse to open directories, which is fine.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FileSystemArtifactStore:
    """``key`` is the path of the object relative to ``root``."""

    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.root = root.resolve()
        except OSError as exc:
            raise _unavailable(f"creating {root}", exc) from exc

    def __repr__(self) -> str:
        return f"FileSystemArtifactStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        # Keys are ours, but a bad one must never touch a file outside root.
        parts = key.split("/")
        if (
            not key
            or "\\" in key
            or "\0" in key
            or any(part in ("", ".", "..") for part in parts)
            or parts[-1].startswith(TEMP_PREFIX)
        ):
            raise ValueError(f"invalid storage key {key!r}")
        path = self.root.joinpath(*parts)
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} escapes the store root")
        return path

    def writer(self, key: str) -> FileSystemBlobWriter:
        return FileSystemBlobWriter(self._path(key), key)

    def put(self, key: str, data: BinaryIO) -> StoredObject:
        writer = self.writer(key)
        try:
            while chunk := data.read(CHUNK):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid byte range {start}-{end}")
        path = self._path(key)
        try:
            file = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ArtifactNotFound(key) from exc
        except OSError as exc:
            raise _unavailable(f"opening {key!r}", exc) from exc
        try:
            if start:
                file.seek(start)
        except OSError as exc:
            file.close()
            raise _unavailable(f"seeking in {key!r}", exc) from exc
        remaining = None if end is None else max(0, end + 1 - start)
        return io.BufferedReader(RangeReader(file, remaining, key), CHUNK)

    def chunks(
        self, key: str, start: int = 0, end: int | None = None, *, piece_size: int | None = None
    ) -> Iterator[bytes]:
        return Pieces(self.open(key, start, end), piece_size or READ_CHUNK)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            info = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None
            raise _unavailable(f"stat of {key!r}", exc) from exc
        if not stat.S_ISREG(info.st_mode):
            return None
        return ObjectInfo(key=key, size=info.st_size, modified=_mtime(info.st_mtime))

    def download(self, key: str, dest: Path) -> None:
        with self.open(key) as source:
            copy_to_file(iter(lambda: source.read(CHUNK), b""), dest)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise _unavailable(f"deleting {key!r}", exc) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, not the whole store.
        directory = prefix.rpartition("/")[0]
        top = self.root.joinpath(*directory.split("/")) if directory else self.root
        try:
            for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
                dirnames.sort()
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in sorted(filenames):
                    key = name if rel == "." else f"{rel}/{name}"
                    if name.startswith(TEMP_PREFIX) or not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while we walked
                    yield ObjectInfo(key=key, size=st.st_size, modified=_mtime(st.st_mtime))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _unavailable(f"listing {prefix!r}", exc) from exc

    def check(self) -> None:
        if not os.path.isdir(self.root) or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"local artifact store {self.root} is missing or read-only")


class Pieces(Iterator[bytes]):
    """An open stream read ``size`` bytes at a time; ``close`` works before the first read
    too (a generator that never started would leave the file to the garbage collector)."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream, self._size = stream, size

    def __next__(self) -> bytes:
        if chunk := self._stream.read(self._size):
            return chunk
        self.close()
        raise StopIteration

    def close(self) -> None:
        self._stream.close()


def _raise(exc: OSError) -> None:
    if isinstance(exc, FileNotFoundError):
        return
    raise exc


def _mtime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def copy_to_file(chunks: Iterable[bytes], dest: Path) -> None:
    """Writes beside ``dest`` and renames, so a reader never sees a half-written file."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    except OSError as exc:
        raise _unavailable(f"creating a file beside {dest}", exc) from exc
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, dest)
    except OSError as exc:
        Path(name).unlink(missing_ok=True)
        raise _unavailable(f"writing {dest}", exc) from exc
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
