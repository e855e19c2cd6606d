"""SQL for garbage collection: which digests are still referenced, locks, stale uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import Select, delete, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.repositories.base import Repository
from registry.tables import AliasRow, BlobRow, FileRow, RevisionRow, UploadRow, VersionRow

# pg_try_advisory_lock key: "mp-gc" as an integer; one sweep at a time across replicas.
GC_LOCK_KEY = 0x6D702D6763


def _referenced() -> Select[str]:
    """Digests a version that is not failed refers to (pending uploads, ready, archived),
    or that any version an alias or a deployment revision points at refers to."""
    return (
        select(FileRow.sha256)
        .join(VersionRow, VersionRow.id == FileRow.version_id)
        .where(
            or_(
                VersionRow.status != "failed",
                VersionRow.id.in_(select(AliasRow.version_id)),
                VersionRow.id.in_(select(RevisionRow.version_id)),
            )
        )
        .distinct()
    )


@asynccontextmanager
async def advisory_lock(connection: AsyncConnection) -> AsyncIterator[bool]:
    """Postgres' session advisory lock on ``connection`` (in autocommit): yields whether
    we hold it. A replica that dies holding it drops it with its connection."""
    held = bool(
        await connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": GC_LOCK_KEY})
    )
    try:
        yield held
    finally:
        if held:
            await connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": GC_LOCK_KEY})


class GcRepository(Repository):
    async def referenced(self) -> set[str]:
        return set(await self._session.scalars(_referenced()))

    async def referenced_among(self, digests: list[str]) -> set[str]:
        stmt = _referenced().where(FileRow.sha256.in_(digests))
        return set(await self._session.scalars(stmt))

    async def lock_blobs(self, digests: list[str]) -> None:
        """Row locks on the blobs' rows: a version being created that found them stored
        (``BlobRepository.stored(lock=True)``) commits first, or waits for us."""
        stmt = select(BlobRow.sha256).where(BlobRow.sha256.in_(digests)).with_for_update()
        await self._session.execute(stmt)

    async def forget_blobs(self, digests: list[str]) -> None:
        await self._session.execute(delete(BlobRow).where(BlobRow.sha256.in_(digests)))

    async def stale_uploads(self, before: datetime) -> list[UploadRow]:
        stmt = select(UploadRow).where(UploadRow.created_at < before).order_by(UploadRow.id)
        return list(await self._session.scalars(stmt))

    async def upload_keys(self) -> set[str]:
        return set(await self._session.scalars(select(UploadRow.temp_key)))

    async def forget_upload(self, upload_id: int) -> None:
        await self._session.execute(delete(UploadRow).where(UploadRow.id == upload_id))
