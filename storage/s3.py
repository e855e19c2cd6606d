"""Artifacts in an S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph RGW) through boto3."""

from __future__ import annotations

import builtins  # the store's list() method shadows list in its class body
import hashlib
import io
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, BinaryIO, NoReturn
from urllib.parse import quote

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from storage.base import (
    ArtifactNotFound,
    DigestMismatch,
    InvalidUpload,
    ObjectInfo,
    PartInfo,
    StorageError,
    StorageUnavailable,
    StoredObject,
)
from storage.filesystem import CHUNK, copy_to_file

log = logging.getLogger(__name__)

# 8 MiB parts, as boto3's TransferConfig: a proxied upload holds (3 in flight + 1) x 8 MiB.
DEFAULT_PART_SIZE = 8 * 2**20
MIN_PART_SIZE = 5 * 2**20
PARTS_IN_FLIGHT = 3
# Reads fetch RANGE-sized ranged GETs, a few in parallel: STREAM_AHEAD for a download
# (the client sets the pace; memory ~(STREAM_AHEAD + 1) x RANGE each), VERIFY_AHEAD when
# the control plane reads an object back to hash it (sha256 runs at ~1.8 GB/s here,
# the store is the bottleneck).
RANGE = 8 * 2**20
STREAM_AHEAD = 2
VERIFY_AHEAD = 4

# Errors of the transport or of boto3 itself: none of them may leave this module.
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error, Urllib3Error, OSError)
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
# Problems with what the client sent to a direct upload, not with the store.
INVALID_UPLOAD_CODES = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidArgument"}


class S3ArtifactStore:
    """Objects live under ``prefix`` + key in ``bucket``."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        parts_in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size, self.parts_in_flight = part_size, parts_in_flight

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r}, {self.endpoint})"

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def full_key(self, key: str) -> str:
        return self.prefix + key

    def fail(self, exc: BaseException, action: str, key: str | None = None) -> NoReturn:
        """Re-raise a boto3/botocore/transport error as one of ours."""
        raise translate(exc, action, self.bucket, self.endpoint, key) from exc

    # --- ArtifactStore -------------------------------------------------------------------

    def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(self, key)

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
        check_range(start, end)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(**params)["Body"]
        except S3_ERRORS as exc:
            if error_code(exc) == "InvalidRange":  # start past the end: nothing to read
                return io.BytesIO(b"")
            self.fail(exc, "GetObject", key)
        return S3Stream(
            body, lambda exc: translate(exc, "reading", self.bucket, self.endpoint, key)
        )  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except S3_ERRORS as exc:
            if is_not_found(exc):
                return None
            self.fail(exc, "HeadObject", key)
        return ObjectInfo(key=key, size=head["ContentLength"], modified=head["LastModified"])

    def chunks(
        self, key: str, start: int = 0, end: int | None = None, *, piece_size: int | None = None
    ) -> Iterator[bytes]:
        check_range(start, end)
        info = self.stat(key)
        if info is None:
            raise ArtifactNotFound(key)
        last = info.size - 1 if end is None else min(end, info.size - 1)
        return self.read_ahead(key, start, last, STREAM_AHEAD, piece_size or RANGE)

    def download(self, key: str, dest: Path) -> None:
        copy_to_file(self.chunks(key), dest)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except S3_ERRORS as exc:
            if not is_not_found(exc):
                self.fail(exc, "DeleteObject", key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"][len(self.prefix) :],
                        size=item["Size"],
                        modified=item["LastModified"],
                    )
        except S3_ERRORS as exc:
            self.fail(exc, "ListObjectsV2", prefix)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            raise translate(exc, "HeadBucket", self.bucket, self.endpoint, None) from exc

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist yet (embedded setups, tests)."""
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                self.fail(exc, "CreateBucket")

    # --- DirectUploadStore ---------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        try:
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.full_key(key))
        except S3_ERRORS as exc:
            self.fail(exc, "CreateMultipartUpload", key)
        return str(answer["UploadId"])

    def presign_part(
        self, key: str, upload_id: str, part_number: int, expires_in: int = 3600
    ) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": self.full_key(key),
            "UploadId": upload_id,
            "PartNumber": part_number,
        }
        return self.presign("upload_part", params, expires_in, key)

    def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        paginator = self.client.get_paginator("list_parts")
        parts: builtins.list[PartInfo] = []
        try:
            for page in paginator.paginate(
                Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id
            ):
                for part in page.get("Parts", []):
                    parts.append(PartInfo(part["PartNumber"], part["Size"], part["ETag"]))
        except S3_ERRORS as exc:
            self.fail(exc, "ListParts", key)
        return sorted(parts, key=lambda part: part.number)

    def complete_multipart(self, key: str, upload_id: str, parts: builtins.list[PartInfo]) -> None:
        listed = [
            {"PartNumber": part.number, "ETag": part.etag}
            for part in sorted(parts, key=lambda part: part.number)
        ]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.full_key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
        except S3_ERRORS as exc:
            self.fail(exc, "CompleteMultipartUpload", key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id
            )
        except S3_ERRORS as exc:
            if not is_not_found(exc):
                self.fail(exc, "AbortMultipartUpload", key)

    def verify(
        self, key: str, *, expected_sha256: str, expected_size: int | None = None
    ) -> StoredObject:
        digest, size = self.hash_object(key)
        if digest != expected_sha256 or (expected_size is not None and expected_size != size):
            raise DigestMismatch(
                expected_sha256=expected_sha256,
                actual_sha256=digest,
                expected_size=expected_size,
                actual_size=size,
            )
        return StoredObject(key=key, size=size, sha256=digest)

    def hash_object(self, key: str) -> tuple[str, int]:
        info = self.stat(key)
        if info is None:
            raise ArtifactNotFound(key)
        digest, size = hashlib.sha256(), 0
        for chunk in self.read_ahead(key, 0, info.size - 1, VERIFY_AHEAD):
            digest.update(chunk)  # releases the GIL: hashing overlaps the next ranged GETs
            size += len(chunk)
        return digest.hexdigest(), size

    def read_ahead(
        self, key: str, start: int, end: int, depth: int, piece: int = RANGE
    ) -> Iterator[bytes]:
        """Bytes ``start`` .. ``end`` in order, ``piece``-sized pieces, while ranged GETs for
        the next ``depth`` run in parallel: one stream alone rarely fills the link or the
        store, and memory stays at most ``depth`` + 1 pieces."""
        ranges = deque(
            (offset, min(offset + piece, end + 1) - 1) for offset in range(start, end + 1, piece)
        )
        with ThreadPoolExecutor(depth, thread_name_prefix="s3-read") as pool:
            ahead: deque[Future[bytes]] = deque()
            try:
                while ranges or ahead:
                    while ranges and len(ahead) < depth:
                        ahead.append(pool.submit(self.read_range, key, *ranges.popleft()))
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self.open(key, start, end) as stream:
            data = stream.read()
        if len(data) != end - start + 1:
            raise StorageUnavailable(
                f"{key!r} in bucket {self.bucket!r} changed while it was being read"
            )
        return data

    def promote(self, src: str, dst: str) -> None:
        # Managed copy: one CopyObject below the threshold, UploadPartCopy in parallel above.
        config = TransferConfig(
            multipart_threshold=4 * self.part_size,
            multipart_chunksize=4 * self.part_size,
            max_concurrency=4,
        )
        source = {"Bucket": self.bucket, "Key": self.full_key(src)}
        try:
            self.client.copy(source, self.bucket, self.full_key(dst), Config=config)
        except S3_ERRORS as exc:
            self.fail(exc, "CopyObject", src)
        self.delete(src)

    def presign_get(self, key: str, expires_in: int = 3600, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.presign("get_object", params, expires_in, key)

    def presign(self, operation: str, params: dict[str, Any], expires_in: int, key: str) -> str:
        try:
            return str(
                self.client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_in)
            )
        except S3_ERRORS as exc:
            self.fail(exc, f"presigning {operation}", key)


class S3BlobWriter:
    """A multipart upload straight to the final key, completed only if the digest matches.

    Full parts go to a small thread pool while the caller keeps writing; a semaphore makes
    ``write`` wait when ``parts_in_flight`` parts are already on their way, so memory stays
    at most (parts_in_flight + 1) x part_size whatever the object size. A last part is always
    kept back until ``commit``, so an object of at most one part is a single PutObject.
    Parts are filled in place and handed over without copying.
    """

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        self._store, self._key = store, key
        self._full_key = store.full_key(key)
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[tuple[int, Future[str]]] = []
        self._slots = threading.Semaphore(store.parts_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def write(self, chunk: bytes | bytearray) -> None:
        self._ensure_open()
        self._hash.update(chunk)
        self._size += len(chunk)
        part_size = self._store.part_size
        view = memoryview(chunk)
        try:
            while view:
                if len(self._buffer) == part_size:  # full, and more follows: not the last part
                    full, self._buffer = self._buffer, bytearray()
                    self._send(full)
                    del full
                room = part_size - len(self._buffer)
                self._buffer += view[:room]
                view = view[room:]
        except BaseException:
            self.abort()
            raise
        finally:
            view.release()

    def commit(
        self, *, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> StoredObject:
        self._ensure_open()
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
            if self._upload_id is None:
                self._put_whole()
            else:
                self._complete()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return StoredObject(key=self._key, size=self._size, sha256=digest)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        for _, future in self._parts:
            future.cancel()
        # Wait for parts still uploading, or they could land after the abort below.
        wait_futures([future for _, future in self._parts])
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._upload_id is None:
            return
        try:
            self._store.abort_multipart(self._key, self._upload_id)
        except StorageError as exc:
            log.warning(
                "could not abort multipart upload %s of %r: %s",
                self._upload_id,
                self._full_key,
                exc,
            )

    def _ensure_open(self) -> None:
        if self._closed:
            raise StorageError(f"writer for {self._key!r} is already closed")

    def _send(self, part: bytearray) -> None:
        if self._upload_id is None:
            self._upload_id = self._store.create_multipart(self._key)
            self._pool = ThreadPoolExecutor(
                self._store.parts_in_flight, thread_name_prefix="s3-part"
            )
        assert self._pool is not None
        self._raise_failed()
        self._slots.acquire()
        number = len(self._parts) + 1
        # The part travels in a box the upload empties, so no executor bookkeeping keeps
        # its bytes alive once the slot is free again.
        future = self._pool.submit(self._upload_part, number, [part])
        self._parts.append((number, future))

    def _upload_part(self, number: int, box: list[bytearray]) -> str:
        body = box.pop()
        try:
            answer = self._store.client.upload_part(
                Bucket=self._store.bucket,
                Key=self._full_key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
            return str(answer["ETag"])
        finally:
            del body
            self._slots.release()

    def _raise_failed(self) -> None:
        for number, future in self._parts:
            if future.done() and (exc := future.exception()) is not None:
                self._store.fail(exc, f"UploadPart {number}", self._key)

    def _put_whole(self) -> None:
        try:
            self._store.client.put_object(
                Bucket=self._store.bucket, Key=self._full_key, Body=self._buffer
            )
        except S3_ERRORS as exc:
            self._store.fail(exc, "PutObject", self._key)
        self._buffer = bytearray()

    def _complete(self) -> None:
        if self._buffer:
            last, self._buffer = self._buffer, bytearray()
            self._send(last)
            del last
        wait_futures([future for _, future in self._parts])
        self._raise_failed()
        assert self._upload_id is not None
        parts = [PartInfo(number, 0, future.result()) for number, future in self._parts]
        self._store.complete_multipart(self._key, self._upload_id, parts)
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class S3Stream(io.RawIOBase):
    """A GetObject body whose read errors become ``StorageUnavailable``."""

    def __init__(self, body: Any, translate_error: Callable[[BaseException], StorageError]) -> None:
        self._body, self._translate = body, translate_error

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return bytes(self._body.read(None if size is None or size < 0 else size))
        except S3_ERRORS as exc:
            raise self._translate(exc) from exc

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def check_range(start: int, end: int | None) -> None:
    # S3 ignores a Range it can't parse and sends the whole object: refuse those here.
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range {start}-{end}")


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def translate(
    exc: BaseException, action: str, bucket: str, endpoint: str, key: str | None
) -> StorageError:
    """ArtifactNotFound for a missing key; StorageUnavailable for everything else."""
    if isinstance(exc, StorageError):
        return exc
    code = error_code(exc)
    if key is not None and code in NOT_FOUND_CODES:
        return ArtifactNotFound(key)
    where = f"bucket {bucket!r} at {endpoint}" + (f", key {key!r}" if key is not None else "")
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = exc.response.get("Error", {}).get("Message", "")
        detail = f"{code} (HTTP {status}){': ' + message if message else ''}"
        if code in INVALID_UPLOAD_CODES:
            return InvalidUpload(f"S3 {action} rejected for {where}: {detail}")
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return StorageUnavailable(f"S3 {action} failed for {where}: {detail}")


def content_disposition(filename: str) -> str:
    # RFC 6266: an ASCII fallback plus the exact UTF-8 name for browsers that read filename*.
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
