"""Garbage collection of blobs nothing refers to, and of abandoned direct uploads.

A blob is kept while a version that is not ``failed`` lists it (pending uploads, ready and
archived versions), or while an alias or a deployment revision points at a version that
does. Of the rest, only blobs older than ``gc_grace_s`` (the object's modification time)
go: bytes are written before the rows that refer to them commit, so a young unreferenced
blob may be an upload in flight. Each removal re-checks, under row locks on the blobs'
rows, that nothing refers to them (a version being created takes ``FOR KEY SHARE`` on the
rows it finds stored, so it either commits first and is seen, or waits and finds no row),
and re-reads the object's age just before deleting it.

One sweep at a time: Postgres' ``pg_try_advisory_lock`` across replicas (a replica that
finds it taken reports ``skipped``); SQLite is one process, one lock here.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from anyio import to_thread
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contract.schemas import GcBlob, GcReport, GcUpload
from registry.db import utcnow
from registry.repositories.events import EventRepository
from registry.repositories.gc import GcRepository, advisory_lock
from registry.services.context import Context
from storage.base import BLOB_PREFIX, ObjectInfo, StorageError

log = logging.getLogger("modelplane.gc")

BATCH = 100
TEMP_PREFIX = "tmp/"
_SQLITE_SWEEP = threading.Lock()  # SQLite deployments run one control-plane process


class GcService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._store = ctx.store

    async def collect(self, *, dry_run: bool) -> GcReport:
        """Sweep (or, with ``dry_run``, report what a sweep would remove)."""
        bind = self._sessions.kw["bind"]
        if bind.dialect.name != "postgresql":
            if not _SQLITE_SWEEP.acquire(blocking=False):
                return _skipped(dry_run)
            try:
                return await self._sweep(dry_run)
            finally:
                _SQLITE_SWEEP.release()
        if isinstance(bind, AsyncConnection):  # sessions bound to one connection
            return await self._locked_sweep(bind, dry_run)
        assert isinstance(bind, AsyncEngine)
        async with bind.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await self._locked_sweep(connection, dry_run)

    async def _locked_sweep(self, connection: AsyncConnection, dry_run: bool) -> GcReport:
        async with advisory_lock(connection) as held:
            if not held:
                log.info("garbage collection skipped: another replica holds the lock")
                return _skipped(dry_run)
            return await self._sweep(dry_run)

    async def _sweep(self, dry_run: bool) -> GcReport:
        settings = self._ctx.settings
        now = utcnow()
        uploads = await self._uploads(now - timedelta(seconds=settings.upload_ttl_s), dry_run)
        cutoff = now - timedelta(seconds=settings.gc_grace_s)
        async with self._sessions() as session:
            live = await GcRepository(session).referenced()
        listed = await to_thread.run_sync(lambda: list(self._store.list(BLOB_PREFIX)))
        candidates, recent = [], 0
        for info in listed:
            if info.key.removeprefix(BLOB_PREFIX) in live:
                continue
            if info.modified > cutoff:
                recent += 1
                continue
            candidates.append(info)
        removed = candidates if dry_run else await self._remove(candidates, cutoff)
        report = GcReport(
            dry_run=dry_run,
            skipped=False,
            blobs=[
                GcBlob(sha256=i.key.removeprefix(BLOB_PREFIX), size=i.size, modified=i.modified)
                for i in removed
            ],
            bytes=sum(i.size for i in removed),
            uploads=uploads,
            kept_recent=recent,
        )
        if not dry_run and (report.blobs or report.uploads):
            if (metrics := self._ctx.metrics) is not None:
                metrics.gc_blobs.inc(len(report.blobs))
                metrics.gc_bytes.inc(report.bytes)
            await self._audit(report)
        return report

    async def _remove(self, candidates: list[ObjectInfo], cutoff: datetime) -> list[ObjectInfo]:
        removed: list[ObjectInfo] = []
        for start in range(0, len(candidates), BATCH):
            batch = {i.key.removeprefix(BLOB_PREFIX): i for i in candidates[start : start + BATCH]}
            digests = sorted(batch)
            async with self._sessions.begin() as session:
                repo = GcRepository(session)
                await repo.lock_blobs(digests)
                dead = set(digests) - await repo.referenced_among(digests)
                gone = [d for d in sorted(dead) if await self._delete_if_old(batch[d], cutoff)]
                await repo.forget_blobs(gone)
            removed += [batch[d] for d in gone]
        return removed

    async def _delete_if_old(self, info: ObjectInfo, cutoff: datetime) -> bool:
        """Delete unless rewritten since listed (an upload of the same bytes just now)."""

        def run() -> bool:
            now = self._store.stat(info.key)
            if now is not None and now.modified > cutoff:
                return False
            self._store.delete(info.key)
            return True

        return await to_thread.run_sync(run)

    async def _uploads(self, cutoff: datetime, dry_run: bool) -> list[GcUpload]:
        """Direct uploads started before ``cutoff`` and never completed, and temporary
        objects no upload refers to (left by a crash between assembling and promoting)."""
        async with self._sessions() as session:
            repo = GcRepository(session)
            rows = await repo.stale_uploads(cutoff)
            keys = await repo.upload_keys()
        temps = await to_thread.run_sync(lambda: list(self._store.list(TEMP_PREFIX)))
        orphans = [t for t in temps if t.key not in keys and t.modified < cutoff]
        out = [
            GcUpload(key=r.temp_key, upload_id=r.upload_id, created_at=r.created_at) for r in rows
        ]
        out += [GcUpload(key=t.key, upload_id=None, created_at=t.modified) for t in orphans]
        if dry_run:
            return out
        direct = self._ctx.direct
        for row in rows:
            try:
                if direct is not None:
                    await to_thread.run_sync(direct.abort_multipart, row.temp_key, row.upload_id)
                await to_thread.run_sync(self._store.delete, row.temp_key)
            except StorageError as exc:  # the row stays: the next sweep tries again
                log.warning("could not abort upload %s of %s: %s", row.upload_id, row.temp_key, exc)
                continue
            async with self._sessions.begin() as session:
                await GcRepository(session).forget_upload(row.id)
        for temp in orphans:
            await to_thread.run_sync(self._store.delete, temp.key)
        return out

    async def _audit(self, report: GcReport) -> None:
        log.info(
            "garbage collection removed %d blobs (%d bytes) and %d abandoned uploads",
            len(report.blobs), report.bytes, len(report.uploads),
        )  # fmt: skip
        async with self._sessions.begin() as session:
            await EventRepository(session).add(
                self._ctx.actor,
                "gc.collected",
                model=None,
                after={
                    "blobs": len(report.blobs),
                    "bytes": report.bytes,
                    "uploads": len(report.uploads),
                },
            )


def _skipped(dry_run: bool) -> GcReport:
    return GcReport(dry_run=dry_run, skipped=True, blobs=[], bytes=0, uploads=[], kept_recent=0)
