"""SQL over versions, their manifests and the blobs those refer to."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, Row, Select, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.db import table_of, utcnow
from registry.repositories.base import Repository
from registry.tables import AliasRow, BlobRow, FileRow, ModelRow, VersionRow

Selector = int | str  # a number, "latest", or "@alias"

# A version's own columns, named as ``VersionOut`` needs them.
VERSION_COLUMNS = (
    VersionRow.id,
    VersionRow.model_id,
    VersionRow.version,
    VersionRow.status,
    VersionRow.format,
    VersionRow.description,
    VersionRow.tags,
    VersionRow.metadata_.label("metadata_"),
    VersionRow.signature,
    VersionRow.source,
    VersionRow.created_by,
    VersionRow.created_at,
    VersionRow.updated_at,
)
# The columns one version read needs, fetched in a single round trip (version × files).
DETAIL_COLUMNS = (
    *VERSION_COLUMNS,
    FileRow.path,
    FileRow.size,
    FileRow.sha256,
    BlobRow.sha256.label("stored"),
)


def detail_kind(selector: Selector) -> str:
    if isinstance(selector, int):
        return "number"
    return "latest" if selector == "latest" else "alias"


def detail_params(model: str, selector: Selector) -> dict[str, Any]:
    if isinstance(selector, int):
        return {"model": model, "number": selector}
    if selector == "latest":
        return {"model": model}
    return {"model": model, "alias": selector.removeprefix("@")}


def _where_selected(stmt: Select[Any], kind: str) -> Select[Any]:
    """Narrow ``stmt`` to the selected version; values come as bind parameters, so each
    statement is built once and its compiled form reused (the hot read pays no build cost)."""
    model: BindParameter[str] = bindparam("model")
    stmt = stmt.join(ModelRow, ModelRow.id == VersionRow.model_id).where(ModelRow.name == model)
    if kind == "number":
        return stmt.where(VersionRow.version == bindparam("number"))
    if kind == "latest":
        latest = (
            select(VersionRow.id)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(ModelRow.name == model, VersionRow.status == "ready")
            .order_by(VersionRow.version.desc())
            .limit(1)
            .scalar_subquery()
        )
        return stmt.where(VersionRow.id == latest)
    return stmt.join(
        AliasRow, (AliasRow.version_id == VersionRow.id) & (AliasRow.name == bindparam("alias"))
    )


def _detail_statement(kind: str) -> Select[Any]:
    stmt = (
        select(*DETAIL_COLUMNS)
        .select_from(VersionRow)
        .outerjoin(FileRow, FileRow.version_id == VersionRow.id)
        .outerjoin(BlobRow, BlobRow.sha256 == FileRow.sha256)
        .order_by(FileRow.path)
    )
    return _where_selected(stmt, kind)


KINDS = ("number", "latest", "alias")
DETAIL = {kind: _detail_statement(kind) for kind in KINDS}
DETAIL_LOCKED = {kind: stmt.with_for_update(of=VersionRow) for kind, stmt in DETAIL.items()}
FIND = {kind: _where_selected(select(*VERSION_COLUMNS), kind) for kind in KINDS}
FIND_LOCKED = {kind: stmt.with_for_update(of=VersionRow) for kind, stmt in FIND.items()}

# The version-creation statements, built once (see ``_where_selected``). They are Core
# statements on the tables: no unit of work, identity map or RETURNING they don't need.
_versions, _files, _blobs = table_of(VersionRow), table_of(FileRow), table_of(BlobRow)
INSERT_VERSION = insert(_versions).returning(_versions.c.id)
INSERT_FILES = insert(_files)
STORED = select(_blobs.c.sha256).where(_blobs.c.sha256.in_(bindparam("digests", expanding=True)))
# KEY SHARE: garbage collection's FOR UPDATE of the same rows waits for this transaction
# (then sees the files that now refer to the blob), or this waits for GC (and sees no row).
STORED_LOCKED = STORED.with_for_update(read=True, key_share=True)


async def read_detail(
    connection: AsyncConnection, model: str, selector: Selector
) -> list[Row[Any]]:
    """The version and its manifest as rows (one per file); empty if none matches.

    A Core statement on a bare connection: the hot read calls this without any ORM session.
    """
    result = await connection.execute(DETAIL[detail_kind(selector)], detail_params(model, selector))
    return list(result.all())


class VersionRepository(Repository):
    async def detail(self, model: str, selector: Selector) -> list[Row[Any]]:
        """The version and its manifest as rows (one per file); empty if none matches."""
        return await read_detail(await self._session.connection(), model, selector)

    async def detail_locked(self, model: str, selector: Selector) -> list[Row[Any]]:
        """``detail``, with the version row locked until the transaction ends."""
        connection = await self._session.connection()
        stmt = DETAIL_LOCKED[detail_kind(selector)]
        return list((await connection.execute(stmt, detail_params(model, selector))).all())

    async def find(self, model: str, selector: Selector, *, lock: bool = False) -> Row[Any] | None:
        """The version's ``VERSION_COLUMNS`` (a row, not an ORM object), or ``None``."""
        stmt = (FIND_LOCKED if lock else FIND)[detail_kind(selector)]
        connection = await self._session.connection()
        row: Row[Any] | None = (
            await connection.execute(stmt, detail_params(model, selector))
        ).one_or_none()
        return row

    async def find_by_number(self, model_id: int, version: int) -> VersionRow | None:
        stmt = select(VersionRow).where(
            VersionRow.model_id == model_id, VersionRow.version == version
        )
        return (await self._session.scalars(stmt)).one_or_none()

    async def number_of(self, version_id: int) -> int:
        return (
            await self._session.scalars(
                select(VersionRow.version).where(VersionRow.id == version_id)
            )
        ).one()

    async def add(self, values: dict[str, Any], files: list[dict[str, Any]]) -> int:
        """Insert a version (``versions`` column names) and its manifest; the version's id."""
        version_id: int = (await self._session.execute(INSERT_VERSION, values)).scalar_one()
        if files:
            await self._session.execute(
                INSERT_FILES, [{"version_id": version_id, **f} for f in files]
            )
        return version_id

    async def search(
        self, model_id: int, *, status: str | None, before: int | None, limit: int
    ) -> list[VersionRow]:
        stmt = (
            select(VersionRow)
            .where(VersionRow.model_id == model_id)
            .order_by(VersionRow.version.desc())
            .limit(limit)
        )
        if status is not None:
            stmt = stmt.where(VersionRow.status == status)
        if before is not None:
            stmt = stmt.where(VersionRow.version < before)
        return list(await self._session.scalars(stmt))

    async def files(self, version_id: int) -> list[Any]:
        stmt = (
            select(FileRow.path, FileRow.size, FileRow.sha256, BlobRow.sha256.label("stored"))
            .outerjoin(BlobRow, BlobRow.sha256 == FileRow.sha256)
            .where(FileRow.version_id == version_id)
            .order_by(FileRow.path)
        )
        return list((await self._session.execute(stmt)).all())

    async def file(self, version_id: int, path: str) -> Any:
        stmt = (
            select(FileRow.path, FileRow.size, FileRow.sha256, BlobRow.sha256.label("stored"))
            .outerjoin(BlobRow, BlobRow.sha256 == FileRow.sha256)
            .where(FileRow.version_id == version_id, FileRow.path == path)
        )
        return (await self._session.execute(stmt)).one_or_none()

    async def set_fields(self, version_id: int, **values: Any) -> None:
        values.setdefault("updated_at", utcnow())
        await self._session.execute(
            update(_versions).where(_versions.c.id == version_id).values(**values)
        )

    async def delete(self, version_id: int) -> None:
        await self._session.execute(delete(VersionRow).where(VersionRow.id == version_id))


class BlobRepository(Repository):
    async def record(self, sha256: str, size: int) -> None:
        """Note that ``blobs/sha256/<sha256>`` holds verified bytes (idempotent)."""
        stmt = self._insert(BlobRow).values(sha256=sha256, size=size, created_at=utcnow())
        await self._session.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))

    async def stored(self, digests: set[str], *, lock: bool = False) -> set[str]:
        """Which digests have bytes stored; ``lock`` keeps GC off them until the commit."""
        if not digests:
            return set()
        stmt = STORED_LOCKED if lock else STORED
        return set(await self._session.scalars(stmt, {"digests": list(digests)}))
