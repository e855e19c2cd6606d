"""The artifact-store contract. ``storage/`` imports nothing of Modelplane's other packages.

Keys are ours (``blobs/sha256/<hex>``, ``tmp/<uuid>``), never user input. Every call blocks
(boto3, file I/O): async callers run them through ``anyio.to_thread.run_sync``.
botocore errors and ``OSError`` never leave this package: they become ``ArtifactNotFound``
(the key is absent) or ``StorageUnavailable`` (the store can't be reached or refused us).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

BLOB_PREFIX = "blobs/sha256/"


def blob_key(sha256: str) -> str:
    """Where the bytes whose digest is ``sha256`` (64 lowercase hex) live."""
    return f"{BLOB_PREFIX}{sha256}"


class StorageError(Exception):
    """Base of every error this package raises."""


class ArtifactNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no object stored under {key!r}")
        self.key = key


class StorageUnavailable(StorageError):
    """The store is down, unreachable or refused the request; retrying later may work."""


class InvalidUpload(StorageError):
    """The store refused to assemble a direct upload: missing, too small or misordered parts
    (the client's mistake, unlike ``StorageUnavailable``)."""


class DigestMismatch(StorageError):
    """The bytes written do not have the size or sha256 the caller expected."""

    def __init__(
        self,
        *,
        expected_sha256: str,
        actual_sha256: str,
        expected_size: int | None,
        actual_size: int,
    ) -> None:
        super().__init__(
            f"content does not match: expected sha256 {expected_sha256}"
            + (f" ({expected_size} bytes)" if expected_size is not None else "")
            + f", got sha256 {actual_sha256} ({actual_size} bytes)"
        )
        self.expected_sha256, self.actual_sha256 = expected_sha256, actual_sha256
        self.expected_size, self.actual_size = expected_size, actual_size


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PartInfo:
    number: int
    size: int
    etag: str


class BlobWriter(Protocol):
    """A streamed write to one key: ``write`` chunks, then ``commit`` or ``abort``.

    Nothing is visible under the key before ``commit`` returns, and nothing ever is if the
    digest check fails or ``abort`` is called (S3: multipart upload completed only on
    success; folder: temporary file in the same directory, renamed on success).
    """

    def write(self, chunk: bytes | bytearray) -> None:
        """Append bytes, hashing them; may upload a part. Blocking."""

    def commit(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> StoredObject:
        """Publish under the key. Raises ``DigestMismatch`` (and publishes nothing)
        when the bytes written don't match what the caller expected."""

    def abort(self) -> None:
        """Discard everything written; safe to call twice or after a failed commit."""


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifact bytes live."""

    def writer(self, key: str) -> BlobWriter:
        """Start a streamed, verified write to ``key``."""

    def put(self, key: str, data: BinaryIO) -> StoredObject:
        """Stream ``data`` to ``key``; returns its size and sha256."""

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A readable stream of bytes ``start`` .. ``end`` (inclusive, ``None``: to the end).
        Raises ``ArtifactNotFound`` if absent."""

    def chunks(
        self, key: str, start: int = 0, end: int | None = None, *, piece_size: int | None = None
    ) -> Iterator[bytes]:
        """Bytes ``start`` .. ``end`` (inclusive) in order, in big pieces (a few MiB), for
        streaming a download. Raises ``ArtifactNotFound`` now, not on the first ``next``.
        S3 fetches the next few ranges in parallel while the caller consumes one.
        ``piece_size`` overrides the store's default piece size."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time, or ``None`` if absent."""

    def download(self, key: str, dest: Path) -> None:
        """Copy the object to a local file (written beside ``dest`` then renamed)."""

    def delete(self, key: str) -> None:
        """Remove the object; an absent key is fine."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (for garbage collection)."""

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the store answers (for ``/readyz``)."""


@runtime_checkable
class DirectUploadStore(Protocol):
    """What only an S3-compatible store can do: clients move bytes straight to the store."""

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload to ``key``; returns its upload id."""

    def presign_part(
        self, key: str, upload_id: str, part_number: int, expires_in: int = 3600
    ) -> str:
        """A URL the client PUTs one part's bytes to."""

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """Parts already uploaded (so an interrupted client resumes where it stopped)."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> None:
        """Assemble the parts into the object under ``key``."""

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts; an unknown upload id is fine."""

    def verify(
        self, key: str, *, expected_sha256: str, expected_size: int | None = None
    ) -> StoredObject:
        """Read the object back, hash it, and raise ``DigestMismatch`` if it differs."""

    def promote(self, src: str, dst: str) -> None:
        """Server-side copy ``src`` to ``dst`` (any size), then delete ``src``."""

    def presign_get(self, key: str, expires_in: int = 3600, filename: str | None = None) -> str:
        """A URL that downloads the object directly from the store."""
