"""Models and versions: the catalog's use cases."""

from __future__ import annotations

import logging
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from anyio import to_thread
from sqlalchemy import Row

from contract import formats
from contract.enums import VersionStatus
from contract.pipeline import MAX_PIPELINE_BYTES, PIPELINE_FILE, parse_pipeline_file
from contract.schemas import (
    EventOut,
    ModelCreate,
    ModelOut,
    ModelUpdate,
    Page,
    VersionCreate,
    VersionOut,
    VersionSummary,
    VersionUpdate,
)
from registry.db import reading, reading_connection, utcnow
from registry.errors import (
    FilesMissing,
    Forbidden,
    InvalidLayout,
    InvalidPipeline,
    ModelHasAliases,
    UnknownFormat,
    VersionAliased,
    VersionImmutable,
    VersionNotFound,
)
from registry.repositories.aliases import AliasRepository
from registry.repositories.base import decode_cursor
from registry.repositories.events import EventRepository
from registry.repositories.models import ModelRepository
from registry.repositories.uploads import UploadRepository
from registry.repositories.versions import (
    BlobRepository,
    Selector,
    VersionRepository,
    read_detail,
)
from registry.services.aliases import move_alias, tell_moved
from registry.services.context import Context
from registry.services.deployments import Changed, ignore
from registry.services.hf_layout import HfLayoutError, check_hf_files
from registry.services.paging import to_page
from registry.services.version_views import version_out
from registry.tables import EventRow, ModelRow, VersionRow
from storage.base import ArtifactNotFound, StorageError, blob_key


def check_format(fmt: str | None, files: Any, metadata: Any = None) -> None:
    """A version's format is one a runtime serves and its files make one (`contract.formats`):
    422 when a version is created, and again when it is finalised, before anything deploys.
    A Hugging Face directory may hold pickled weights only with metadata `allow_pickle`."""
    allow_pickle = isinstance(metadata, dict) and metadata.get("allow_pickle") is True
    try:
        formats.check_version(fmt, files, allow_pickle=allow_pickle)
    except formats.UnknownFormat as exc:
        raise UnknownFormat(str(exc), known=exc.known) from None
    except formats.FormatError as exc:
        raise InvalidLayout(str(exc)) from None


def model_out(row: ModelRow) -> ModelOut:
    return ModelOut(
        name=row.name,
        description=row.description,
        tags=row.tags,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def summary_out(model: str, row: VersionRow) -> VersionSummary:
    return VersionSummary(
        model=model,
        version=row.version,
        status=VersionStatus(row.status),
        format=row.format,
        description=row.description,
        tags=row.tags,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def event_out(row: EventRow) -> EventOut:
    return EventOut(
        id=row.id,
        time=row.time,
        actor=row.actor,
        action=row.action,
        model=row.model,
        target=row.target,
        before=row.before,
        after=row.after,
        request_id=row.request_id,
        client=row.client,
        actor_key_id=row.actor_key_id,
    )


log = logging.getLogger("modelplane.registry")


class CatalogService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._changed = changed  # told (after commit) which deployments an alias move changed

    # -- models -------------------------------------------------------------------------

    async def create_model(self, body: ModelCreate) -> ModelOut:
        if not self._ctx.principal.reaches(body.name):
            raise Forbidden(
                f"the API key {self._ctx.principal.name!r} may only create models matching "
                f"{list(self._ctx.principal.model_globs)}"
            )
        async with self._sessions.begin() as session:
            row = await ModelRepository(session).create(body.name, body.description, body.tags)
            out = model_out(row)
            await EventRepository(session).add(
                self._ctx.actor,
                "model.created",
                model=body.name,
                after=out.model_dump(mode="json"),
            )
            return out

    async def list_models(
        self, *, q: str | None, tags: dict[str, str], cursor: str | None, limit: int
    ) -> Page[ModelOut]:
        after = decode_cursor(cursor, str)
        async with reading(self._sessions) as session:
            rows = await ModelRepository(session).search(
                q=q, tags=tags, after=after, limit=limit + 1, globs=self._ctx.principal.model_globs
            )
            return to_page(rows, limit, lambda r: r.name, model_out)

    async def get_model(self, name: str) -> ModelOut:
        async with reading(self._sessions) as session:
            return model_out(await ModelRepository(session).get(name))

    async def update_model(self, name: str, body: ModelUpdate) -> ModelOut:
        async with self._sessions.begin() as session:
            row = await ModelRepository(session).get(name, lock=True)
            before = model_out(row).model_dump(mode="json")
            for field, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
                setattr(row, field, value)
            row.updated_at = utcnow()
            await session.flush()
            out = model_out(row)
            await EventRepository(session).add(
                self._ctx.actor,
                "model.updated",
                model=name,
                before=before,
                after=out.model_dump(mode="json"),
            )
            return out

    async def delete_model(self, name: str) -> None:
        """Refused while the model has aliases: those are what deployments follow."""
        async with self._sessions.begin() as session:
            row = await ModelRepository(session).get(name, lock=True)
            if aliases := await AliasRepository(session).names_for_model(row.id):
                raise ModelHasAliases(name, aliases)
            before = model_out(row).model_dump(mode="json")
            await ModelRepository(session).delete(row.id)
            await EventRepository(session).add(
                self._ctx.actor, "model.deleted", model=name, before=before
            )

    # -- versions -----------------------------------------------------------------------

    async def create_version(self, name: str, body: VersionCreate) -> VersionOut:
        async with self._sessions.begin() as session:
            out = await self._create_version(session, name, body)
            await self._event(session, "version.created", name, out.version, after=out.version)
        self._count_version("manifest")
        return out

    def _count_version(self, kind: str) -> None:
        if (metrics := self._ctx.metrics) is not None:
            metrics.versions_created.labels(kind).inc()

    async def _create_version(self, session: Any, name: str, body: VersionCreate) -> VersionOut:
        check_format(body.format, body.files, body.metadata)
        model_id, number = await ModelRepository(session).next_version(name)
        now = utcnow()
        version = _Version(
            model_id=model_id,
            version=number,
            status="pending",
            format=body.format,
            description=body.description,
            tags=body.tags,
            metadata_=body.metadata,
            signature=body.signature,
            source=body.source,
            created_by=self._ctx.actor.name,
            created_at=now,
            updated_at=now,
        )
        files = [f.model_dump() for f in body.files]
        values = {**vars(version), "metadata": body.metadata}
        del values["metadata_"]
        await VersionRepository(session).add(values, files)
        stored = await BlobRepository(session).stored({f.sha256 for f in body.files}, lock=True)
        rows = [
            _FileDetail(version, f["path"], f["size"], f["sha256"], f["sha256"] in stored)
            for f in sorted(files, key=lambda f: f["path"])
        ]
        return version_out(self._ctx, name, rows)

    async def create_ready_version(
        self, name: str, body: VersionCreate, alias: str | None
    ) -> VersionOut:
        """One-shot upload: the bytes are stored already; version, ready and alias in one go."""
        check_format(body.format, body.files, body.metadata)
        await self._check_contents(body.format, body.files)
        async with self._sessions.begin() as session:
            out = await self._create_version(session, name, body)
            if missing := [f.path for f in out.files if not f.present]:
                raise FilesMissing(name, out.version, missing)
            row = await self._get_version(session, name, out.version)
            await VersionRepository(session).set_fields(row.id, status="ready", ready_at=utcnow())
            await self._event(session, "version.created", name, out.version, after="ready")
            followers: list[str] = []
            if alias is not None:
                moved = await move_alias(
                    self._ctx, session, name, row.model_id, alias, out.version, "alias.moved"
                )
                followers = moved.deployments
            ready = version_out(
                self._ctx, name, await VersionRepository(session).detail(name, out.version)
            )
        tell_moved(self._changed, followers)
        self._count_version("oneshot")
        return ready

    async def list_versions(
        self, name: str, *, status: str | None, cursor: str | None, limit: int
    ) -> Page[VersionSummary]:
        before = decode_cursor(cursor, int)
        async with reading(self._sessions) as session:
            model_id = await ModelRepository(session).get_id(name)
            rows = await VersionRepository(session).search(
                model_id, status=status, before=before, limit=limit + 1
            )
            return to_page(rows, limit, lambda r: r.version, lambda r: summary_out(name, r))

    async def find_version(self, name: str, selector: Selector) -> VersionOut | None:
        """The hot read (``@production``): one round trip for version and manifest."""
        async with reading_connection(self._sessions) as connection:
            rows = await read_detail(connection, name, selector)
        return version_out(self._ctx, name, rows) if rows else None

    async def get_version(self, name: str, selector: Selector) -> VersionOut:
        if (out := await self.find_version(name, selector)) is not None:
            return out
        async with reading(self._sessions) as session:
            await ModelRepository(session).get_id(name)  # ModelNotFound if that's why
        raise VersionNotFound(name, str(selector))

    async def update_version(
        self, name: str, selector: Selector, body: VersionUpdate
    ) -> VersionOut:
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        async with self._sessions.begin() as session:
            row = await self._get_version(session, name, selector, lock=True)
            if "metadata" in changes and row.status != "pending":
                raise VersionImmutable(
                    name, row.version, row.status, "only description and tags can change"
                )
            await VersionRepository(session).set_fields(row.id, **changes)
            out = version_out(
                self._ctx, name, await VersionRepository(session).detail(name, row.version)
            )
            await self._event(
                session,
                "version.updated",
                name,
                row.version,
                after=body.model_dump(mode="json", exclude_unset=True),
            )
            return out

    async def finalize_version(self, name: str, selector: Selector) -> VersionOut:
        """All manifest blobs stored → ready. Idempotent on a ready version."""
        await self._check_stored_contents(name, selector)
        async with self._sessions.begin() as session:
            # Version, manifest and blob presence in one locked read: one round trip.
            versions = VersionRepository(session)
            if not (rows := await versions.detail_locked(name, selector)):
                await ModelRepository(session).get_id(name)
                raise VersionNotFound(name, str(selector))
            row = rows[0]
            if row.status == "ready":
                return version_out(self._ctx, name, rows)
            if row.status != "pending":
                raise VersionImmutable(name, row.version, row.status, "it cannot become ready")
            files = [r for r in rows if r.path is not None]
            if missing := [f.path for f in files if f.stored is None]:
                raise FilesMissing(name, row.version, missing)
            check_format(row.format, files, row.metadata_)
            now = utcnow()
            await versions.set_fields(row.id, status="ready", ready_at=now, updated_at=now)
            await self._event(
                session, "version.ready", name, row.version, before="pending", after="ready"
            )
            # What the UPDATE wrote is known: no need to read the version back.
            return version_out(self._ctx, name, [_Ready(r, now) for r in rows])

    async def archive_version(self, name: str, selector: Selector) -> VersionOut:
        """Archived versions stay readable by number but are never ``latest``."""
        async with self._sessions.begin() as session:
            row = await self._get_version(session, name, selector, lock=True)
            if aliases := await AliasRepository(session).names_for_version(row.id):
                raise VersionAliased(name, row.version, aliases)
            await VersionRepository(session).set_fields(row.id, status="archived")
            await self._event(
                session, "version.archived", name, row.version, before=row.status, after="archived"
            )
            return version_out(
                self._ctx, name, await VersionRepository(session).detail(name, row.version)
            )

    async def delete_version(self, name: str, selector: Selector) -> None:
        """Rows go now; blobs nothing else refers to are left for garbage collection."""
        async with self._sessions.begin() as session:
            row = await self._get_version(session, name, selector, lock=True)
            if aliases := await AliasRepository(session).names_for_version(row.id):
                raise VersionAliased(name, row.version, aliases)
            uploads = [
                (u.temp_key, u.upload_id)
                for u in await UploadRepository(session).for_version(row.id)
            ]
            await VersionRepository(session).delete(row.id)
            await self._event(session, "version.deleted", name, row.version, before=row.status)
        await self._abort_uploads(uploads)

    async def _abort_uploads(self, uploads: list[tuple[str, str]]) -> None:
        """Drop the deleted version's unfinished direct uploads (after the commit; a
        failure here only leaves parts for the store's lifecycle rules to expire)."""
        if (direct := self._ctx.direct) is None:
            return
        for key, upload_id in uploads:
            try:
                await to_thread.run_sync(direct.abort_multipart, key, upload_id)
            except StorageError:
                log.warning("could not abort multipart upload %s of %s", upload_id, key)

    async def list_events(
        self,
        *,
        since: datetime | None,
        model: str | None,
        action: str | None,
        cursor: str | None,
        limit: int,
        newest_first: bool = False,
        deployment: str | None = None,
        target: str | None = None,
        key_id: str | None = None,
        request_id: str | None = None,
    ) -> Page[EventOut]:
        """Keys restricted to some models see only the events about those models."""
        after = decode_cursor(cursor, int)
        if deployment is not None:
            target = f"deployment:{deployment}"
        async with reading(self._sessions) as session:
            rows = await EventRepository(session).search(
                since=since,
                model=model,
                action=action,
                after=after,
                limit=limit + 1,
                newest_first=newest_first,
                target=target,
                key_id=key_id,
                request_id=request_id,
                globs=self._ctx.principal.model_globs,
            )
            return to_page(rows, limit, lambda r: r.id, event_out)

    # -- helpers ------------------------------------------------------------------------

    async def _check_stored_contents(self, name: str, selector: Selector) -> None:
        """Before the finalize transaction (the blobs are immutable, reads stay out of it):
        a pending version whose files are all stored gets its contents checked."""
        async with reading_connection(self._sessions) as connection:
            rows = await read_detail(connection, name, selector)
        files = [r for r in rows if r.path is not None]
        if not rows or rows[0].status != "pending" or any(f.stored is None for f in files):
            return  # the transaction says why it cannot become ready
        check_format(rows[0].format, files, rows[0].metadata_)
        await self._check_contents(rows[0].format, files)

    async def _check_contents(self, fmt: str | None, files: Any) -> None:
        """What the files hold where a format or a pipeline needs it: a version's
        `pipeline.json` parses (422 `invalid-pipeline`), a Hugging Face directory's files
        make a model (`hf_layout`: 422 naming the file)."""
        files = list(files)
        if pipeline := next((f for f in files if f.path == PIPELINE_FILE), None):
            await to_thread.run_sync(self._check_pipeline, pipeline.sha256)
        if fmt not in formats.HF_FORMATS:
            return
        try:
            await to_thread.run_sync(check_hf_files, self._ctx.store, list(files))
        except HfLayoutError as exc:
            raise InvalidLayout(f"format {fmt}: {exc}") from None
        except ArtifactNotFound:
            return  # not stored: FilesMissing says so

    def _check_pipeline(self, sha256: str) -> None:
        try:
            with self._ctx.store.open(blob_key(sha256)) as blob:
                raw = blob.read(MAX_PIPELINE_BYTES + 1)
        except ArtifactNotFound:
            return  # not stored: FilesMissing says so
        try:
            parse_pipeline_file(raw)
        except ValueError as exc:
            raise InvalidPipeline(f"{PIPELINE_FILE}: {exc}") from None

    async def _get_version(
        self, session: Any, name: str, selector: Selector, *, lock: bool = False
    ) -> Row[Any]:
        row = await VersionRepository(session).find(name, selector, lock=lock)
        if row is None:
            await ModelRepository(session).get_id(name)
            raise VersionNotFound(name, str(selector))
        return row

    async def _event(
        self,
        session: Any,
        action: str,
        model: str,
        version: int,
        *,
        before: Any = None,
        after: Any = None,
    ) -> None:
        await EventRepository(session).add(
            self._ctx.actor,
            action,
            model=model,
            target=f"version:{version}",
            before=before,
            after=after,
        )


class _Version(SimpleNamespace):
    """A version's ``VERSION_COLUMNS``, known without reading them back."""


class _Ready(SimpleNamespace):
    """A ``detail`` row of a version just made ready."""

    def __init__(self, row: Row[Any], now: datetime) -> None:
        super().__init__(**{**row._asdict(), "status": "ready", "updated_at": now})


class _FileDetail:
    """Quacks like a ``VersionRepository.detail`` row, for a version not yet re-read."""

    def __init__(self, v: Any, path: str, size: int, sha256: str, stored: bool) -> None:
        self.version, self.status, self.format = v.version, v.status, v.format
        self.description, self.tags, self.metadata_ = v.description, v.tags, v.metadata_
        self.signature, self.source, self.created_by = v.signature, v.source, v.created_by
        self.created_at, self.updated_at = v.created_at, v.updated_at
        self.path, self.size, self.sha256 = path, size, sha256
        self.stored = sha256 if stored else None
