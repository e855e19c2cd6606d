"""File bytes: proxied and direct (multipart) uploads, downloads.

Bytes move outside any transaction; rows that refer to them are written after the store
has verified and published them (an orphan blob is swept later, a row without bytes is lost data).
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from anyio import CancelScope, to_thread

from contract.pipeline import MAX_PIPELINE_BYTES, PIPELINE_FILE, parse_pipeline_file
from contract.schemas import (
    CompletedPart,
    FileOut,
    FileSpec,
    MultipartOut,
    PartUrl,
    VersionCreate,
    VersionOut,
)
from registry.db import reading
from registry.errors import (
    BlobMissing,
    Conflict,
    ContentMismatch,
    DirectUploadUnsupported,
    FileNotFound,
    InvalidPipeline,
    NoUploadInProgress,
    PartsMissing,
    TooLarge,
    VersionImmutable,
    VersionNotFound,
)
from registry.metrics import ControlPlaneMetrics
from registry.repositories.events import EventRepository
from registry.repositories.models import ModelRepository
from registry.repositories.uploads import UploadRepository
from registry.repositories.versions import BlobRepository, Selector, VersionRepository
from registry.services.catalog import CatalogService
from registry.services.context import Context
from registry.services.deployments import Changed, ignore
from registry.tables import UploadRow
from storage.base import BlobWriter, DigestMismatch, DirectUploadStore, StoredObject, blob_key

BUFFER = 2 * 2**20  # bytes gathered before one hop to a worker thread


@dataclass
class OneShotUpload:
    """A parsed one-shot form: (path, spooled file) pairs and the optional fields."""

    files: list[tuple[str, BinaryIO]]
    format: str | None
    description: str
    alias: str | None
    closer: Callable[[], Awaitable[None]]

    async def close(self) -> None:
        await self.closer()


@dataclass(frozen=True)
class FileRef:
    """One manifest entry of a selected version."""

    model: str
    version: int
    version_id: int
    status: str
    path: str
    size: int
    sha256: str
    stored: bool


def mismatch(exc: DigestMismatch, path: str) -> ContentMismatch:
    return ContentMismatch(
        f"{path!r}: {exc}",
        path=path,
        expected_sha256=exc.expected_sha256,
        actual_sha256=exc.actual_sha256,
        expected_size=exc.expected_size,
        actual_size=exc.actual_size,
    )


async def stream_to_writer(
    writer: BlobWriter, chunks: AsyncIterable[bytes], *, limit: int, expected_size: int | None
) -> int:
    """Feed ``chunks`` to ``writer`` in big buffers (one thread hop each); returns the size.

    Raises ``TooLarge`` past ``limit`` and stops early once more than ``expected_size``
    arrived (the commit would fail anyway)."""
    buf, total = bytearray(), 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"upload exceeds the limit of {limit} bytes")
        if expected_size is not None and total > expected_size:
            break
        buf += chunk
        if len(buf) >= BUFFER:
            # Hand the buffer over (the writer copies what it keeps) and start a new one.
            full, buf = buf, bytearray()
            await to_thread.run_sync(writer.write, full)
            del full
    if buf:
        await to_thread.run_sync(writer.write, buf)
    return total


class FileService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._changed = changed  # told (after commit) which deployments an alias move changed
        self._sessions = ctx.sessions
        self._store = ctx.store

    async def file_ref(self, model: str, selector: Selector, path: str) -> FileRef:
        async with reading(self._sessions) as session:
            versions = VersionRepository(session)
            row = await versions.find(model, selector)
            if row is None:
                await ModelRepository(session).get_id(model)
                raise VersionNotFound(model, str(selector))
            if (f := await versions.file(row.id, path)) is None:
                raise FileNotFound(model, row.version, path)
            return FileRef(
                model,
                row.version,
                row.id,
                row.status,
                f.path,
                f.size,
                f.sha256,
                f.stored is not None,
            )

    async def _writable(self, model: str, selector: Selector, path: str) -> FileRef:
        ref = await self.file_ref(model, selector, path)
        if ref.status != "pending":
            raise VersionImmutable(model, ref.version, ref.status, "its files cannot change")
        return ref

    # -- proxied upload ----------------------------------------------------------------

    async def upload(
        self,
        model: str,
        selector: Selector,
        path: str,
        body: AsyncIterable[bytes],
        content_length: int | None,
    ) -> FileOut:
        """Stream the body straight to the blob's final key; published only if it matches."""
        ref = await self._writable(model, selector, path)
        limit = self._ctx.settings.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise TooLarge(f"upload of {content_length} bytes exceeds the limit of {limit}")
        if ref.size > limit:
            raise TooLarge(f"{path!r} is {ref.size} bytes, over the limit of {limit}")
        if ref.stored:
            return self._file_out(ref)
        if content_length is not None and content_length != ref.size:
            raise ContentMismatch(
                f"{path!r}: the manifest says {ref.size} bytes, the request carries "
                f"{content_length}",
                path=path,
                expected_size=ref.size,
                actual_size=content_length,
            )
        start = time.perf_counter()
        stored = await self._write(ref, body, limit)
        await self._record(ref, stored, "file.uploaded")
        self._count_upload("proxied", stored.size, start)
        return self._file_out(ref)

    def _count_upload(self, kind: str, size: int, start: float) -> None:
        if (metrics := self._ctx.metrics) is not None:
            metrics.upload_bytes.labels(kind).inc(size)
            metrics.upload_seconds.labels(kind).observe(time.perf_counter() - start)

    async def _write(self, ref: FileRef, body: AsyncIterable[bytes], limit: int) -> StoredObject:
        writer = await to_thread.run_sync(self._store.writer, blob_key(ref.sha256))
        try:
            size = await stream_to_writer(writer, body, limit=limit, expected_size=ref.size)
            if size > ref.size:
                raise DigestMismatch(
                    expected_sha256=ref.sha256,
                    actual_sha256="(not computed: too many bytes)",
                    expected_size=ref.size,
                    actual_size=size,
                )
            return await to_thread.run_sync(
                lambda: writer.commit(expected_sha256=ref.sha256, expected_size=ref.size)
            )
        except DigestMismatch as exc:
            await to_thread.run_sync(writer.abort)
            raise mismatch(exc, ref.path) from exc
        except BaseException:
            await to_thread.run_sync(writer.abort)
            raise

    async def _record(self, ref: FileRef, stored: StoredObject, action: str) -> None:
        async with self._sessions.begin() as session:
            await BlobRepository(session).record(stored.sha256, stored.size)
            await EventRepository(session).add(
                self._ctx.actor,
                action,
                model=ref.model,
                target=f"version:{ref.version}/{ref.path}",
                after=stored.sha256,
            )

    @staticmethod
    def _file_out(ref: FileRef) -> FileOut:
        return FileOut(path=ref.path, size=ref.size, sha256=ref.sha256, present=True)

    # -- direct multipart upload ---------------------------------------------------------

    def _direct(self) -> DirectUploadStore:
        if (direct := self._ctx.direct) is None:
            raise DirectUploadUnsupported()
        return direct

    async def start_multipart(self, model: str, selector: Selector, path: str) -> MultipartOut:
        """Begin (or resume) a direct upload: part URLs and the parts already uploaded."""
        direct = self._direct()
        ref = await self._writable(model, selector, path)
        if ref.stored:
            raise Conflict(f"{path!r} is already stored; finalize the version", path=path)
        upload = await self._find_upload(ref)
        if upload is None:
            upload = await self._new_upload(direct, ref)
        return await self._multipart_out(direct, ref, upload)

    async def _find_upload(self, ref: FileRef) -> UploadRow | None:
        async with reading(self._sessions) as session:
            return await UploadRepository(session).find(ref.version_id, ref.path)

    async def _new_upload(self, direct: DirectUploadStore, ref: FileRef) -> UploadRow:
        temp_key = f"tmp/{uuid.uuid4().hex}"
        upload_id = await to_thread.run_sync(direct.create_multipart, temp_key)
        row = UploadRow(
            version_id=ref.version_id,
            path=ref.path,
            upload_id=upload_id,
            temp_key=temp_key,
            part_size=self._ctx.part_size(ref.size),
        )
        async with self._sessions.begin() as session:
            if await UploadRepository(session).add(row):
                return row
        # Another request started one first: use theirs, drop ours.
        await to_thread.run_sync(direct.abort_multipart, temp_key, upload_id)
        if (existing := await self._find_upload(ref)) is None:
            raise NoUploadInProgress(ref.path)
        return existing

    async def _multipart_out(
        self, direct: DirectUploadStore, ref: FileRef, upload: UploadRow
    ) -> MultipartOut:
        count = max(1, math.ceil(ref.size / upload.part_size))
        expiry = self._ctx.settings.presign_expiry_seconds

        def presign_all() -> list[PartUrl]:
            return [
                PartUrl(
                    part_number=n,
                    url=direct.presign_part(upload.temp_key, upload.upload_id, n, expiry),
                )
                for n in range(1, count + 1)
            ]

        parts = await to_thread.run_sync(presign_all)
        done = await to_thread.run_sync(direct.list_parts, upload.temp_key, upload.upload_id)
        return MultipartOut(
            upload_id=upload.upload_id,
            part_size=upload.part_size,
            parts=parts,
            completed_parts=[
                CompletedPart(part_number=p.number, size=p.size, etag=p.etag) for p in done
            ],
        )

    async def complete_multipart(self, model: str, selector: Selector, path: str) -> FileOut:
        """Assemble the parts, read the object back to check its sha256, then publish it."""
        direct = self._direct()
        ref = await self._writable(model, selector, path)
        if ref.stored:
            return self._file_out(ref)
        if (upload := await self._find_upload(ref)) is None:
            raise NoUploadInProgress(path)
        start = time.perf_counter()
        await self._assemble(direct, ref, upload)
        try:
            stored = await to_thread.run_sync(
                lambda: direct.verify(
                    upload.temp_key, expected_sha256=ref.sha256, expected_size=ref.size
                )
            )
        except DigestMismatch as exc:
            await to_thread.run_sync(self._store.delete, upload.temp_key)
            await self._forget_upload(upload)
            raise mismatch(exc, path) from exc
        await to_thread.run_sync(direct.promote, upload.temp_key, blob_key(ref.sha256))
        await self._record(ref, stored, "file.uploaded")
        await self._forget_upload(upload)
        self._count_upload("multipart", stored.size, start)
        return self._file_out(ref)

    async def _assemble(self, direct: DirectUploadStore, ref: FileRef, upload: UploadRow) -> None:
        count = max(1, math.ceil(ref.size / upload.part_size))
        parts = await to_thread.run_sync(direct.list_parts, upload.temp_key, upload.upload_id)
        numbers = sorted(p.number for p in parts)
        if numbers != list(range(1, count + 1)):
            raise PartsMissing(count, numbers)
        await to_thread.run_sync(
            direct.complete_multipart, upload.temp_key, upload.upload_id, parts
        )

    async def _forget_upload(self, upload: UploadRow) -> None:
        async with self._sessions.begin() as session:
            await UploadRepository(session).delete(upload.id)

    # -- one-shot upload ---------------------------------------------------------------

    @property
    def upload_limit(self) -> int:
        return self._ctx.settings.max_upload_bytes

    async def upload_version(self, model: str, form: OneShotUpload) -> VersionOut:
        """Store each file (unless its bytes are already stored), then create the version
        ready, and point the alias at it, in one transaction."""
        catalog = CatalogService(self._ctx, self._changed)
        await catalog.get_model(model)  # 404 before any byte is stored
        for path, file in form.files:
            if path == PIPELINE_FILE:
                await to_thread.run_sync(check_pipeline_file, file)
        specs = []
        start = time.perf_counter()
        for path, file in form.files:
            stored = await self.store_local(file, self.upload_limit)
            specs.append(FileSpec(path=path, size=stored.size, sha256=stored.sha256))
        self._count_upload("oneshot", sum(s.size for s in specs), start)
        body = VersionCreate(files=specs, format=form.format, description=form.description)
        return await catalog.create_ready_version(model, body, form.alias)

    async def store_local(self, file: BinaryIO, limit: int) -> StoredObject:
        """Hash a spooled form file, then copy it to its blob key unless already stored."""
        sha256, size = await to_thread.run_sync(_hash_file, file, limit)
        async with reading(self._sessions) as session:
            present = await BlobRepository(session).stored({sha256})
        if not present:
            await to_thread.run_sync(self._copy_verified, file, sha256, size)
            async with self._sessions.begin() as session:
                await BlobRepository(session).record(sha256, size)
        return StoredObject(key=blob_key(sha256), size=size, sha256=sha256)

    def _copy_verified(self, file: BinaryIO, sha256: str, size: int) -> None:
        file.seek(0)
        writer = self._store.writer(blob_key(sha256))
        try:
            while chunk := file.read(BUFFER):
                writer.write(chunk)
            writer.commit(expected_sha256=sha256, expected_size=size)
        except BaseException:
            writer.abort()
            raise

    # -- download ------------------------------------------------------------------------

    async def downloadable(self, model: str, selector: Selector, path: str) -> FileRef:
        ref = await self.file_ref(model, selector, path)
        if not ref.stored:
            raise BlobMissing(path)
        return ref

    def presigned_url(self, ref: FileRef) -> str | None:
        direct = self._ctx.direct
        if direct is None:
            return None
        return direct.presign_get(
            blob_key(ref.sha256),
            self._ctx.settings.presign_expiry_seconds,
            filename=ref.path.rsplit("/", 1)[-1],
        )

    async def open(self, ref: FileRef, start: int, end: int) -> AsyncIterator[bytes]:
        """Open the range and read its first piece now (errors surface before the answer
        starts, never as a truncated body); stream the rest later, in the store's big
        pieces (S3 prefetches ranges in parallel)."""
        pieces = await to_thread.run_sync(self._store.chunks, blob_key(ref.sha256), start, end)
        try:
            first = await to_thread.run_sync(next, pieces, None)
        except BaseException:
            with CancelScope(shield=True):
                await to_thread.run_sync(_close, pieces)
            raise
        return _stream(pieces, self._ctx.metrics, first)


def check_pipeline_file(file: BinaryIO) -> None:
    """A version's `pipeline.json` must be a valid pipeline: 422 before anything is stored."""
    file.seek(0)
    raw = file.read(MAX_PIPELINE_BYTES + 1)
    file.seek(0)
    try:
        parse_pipeline_file(raw)
    except ValueError as exc:
        raise InvalidPipeline(f"{PIPELINE_FILE}: {exc}") from None


def _hash_file(file: BinaryIO, limit: int) -> tuple[str, int]:
    file.seek(0)
    digest, size = hashlib.sha256(), 0
    while chunk := file.read(BUFFER):
        digest.update(chunk)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"upload exceeds the limit of {limit} bytes")
    return digest.hexdigest(), size


async def _stream(
    pieces: Iterator[bytes], metrics: ControlPlaneMetrics | None, first: bytes | None
) -> AsyncIterator[bytes]:
    """``first``, then one thread hop per piece (a few MiB), never blocking the event loop."""
    start, sent = time.perf_counter(), 0
    piece = first
    try:
        while piece is not None:
            yield piece
            sent += len(piece)
            piece = await to_thread.run_sync(next, pieces, None)
    finally:
        if metrics is not None:
            metrics.download_bytes.inc(sent)
            metrics.download_seconds.observe(time.perf_counter() - start)
        with CancelScope(shield=True):  # a client gone mid-download still stops the reads
            await to_thread.run_sync(_close, pieces)


def _close(pieces: Iterator[bytes]) -> None:
    if (close := getattr(pieces, "close", None)) is not None:
        close()  # stops an S3 read-ahead, closes a local file
