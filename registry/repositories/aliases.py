"""SQL over aliases and their history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update

from registry.db import utcnow
from registry.repositories.base import Repository
from registry.tables import AliasHistoryRow, AliasRow, VersionRow

ALIAS_COLUMNS = (
    AliasRow.id,
    AliasRow.name,
    VersionRow.version,
    AliasRow.updated_at,
    AliasRow.protected,
)


class AliasRepository(Repository):
    async def find(self, model_id: int, name: str, *, lock: bool = False) -> Any:
        """(id, name, version, updated_at, protected) of the alias, or ``None``."""
        stmt = (
            select(*ALIAS_COLUMNS)
            .join(VersionRow, VersionRow.id == AliasRow.version_id)
            .where(AliasRow.model_id == model_id, AliasRow.name == name)
        )
        if lock:
            stmt = stmt.with_for_update(of=AliasRow)
        return (await self._session.execute(stmt)).one_or_none()

    async def search(self, model_id: int, *, after: str | None, limit: int) -> list[Any]:
        stmt = (
            select(*ALIAS_COLUMNS)
            .join(VersionRow, VersionRow.id == AliasRow.version_id)
            .where(AliasRow.model_id == model_id)
            .order_by(AliasRow.name)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(AliasRow.name > after)
        return list((await self._session.execute(stmt)).all())

    async def names_for_version(self, version_id: int) -> list[str]:
        stmt = select(AliasRow.name).where(AliasRow.version_id == version_id)
        return sorted(await self._session.scalars(stmt))

    async def names_for_model(self, model_id: int) -> list[str]:
        stmt = select(AliasRow.name).where(AliasRow.model_id == model_id)
        return sorted(await self._session.scalars(stmt))

    async def point(self, model_id: int, name: str, version_id: int) -> None:
        """Create the alias or move it (the caller has locked or checked it)."""
        row = (
            await self._session.scalars(
                select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == name)
            )
        ).one_or_none()
        if row is None:
            self._session.add(AliasRow(model_id=model_id, name=name, version_id=version_id))
        else:
            row.version_id, row.updated_at = version_id, utcnow()
        await self._session.flush()

    async def set_protected(self, alias_id: int, protected: bool) -> None:
        await self._session.execute(
            update(AliasRow).where(AliasRow.id == alias_id).values(protected=protected)
        )

    async def delete(self, alias_id: int) -> None:
        await self._session.execute(delete(AliasRow).where(AliasRow.id == alias_id))

    async def record_move(
        self, model_id: int, name: str, before: int | None, after: int | None, actor: str
    ) -> None:
        self._session.add(
            AliasHistoryRow(
                model_id=model_id, alias=name, from_version=before, to_version=after, actor=actor
            )
        )
        await self._session.flush()

    async def last_move(self, model_id: int, name: str) -> int | None:
        """Id of the alias's newest history row: it changes on every move (its ETag)."""
        stmt = select(func.max(AliasHistoryRow.id)).where(
            AliasHistoryRow.model_id == model_id, AliasHistoryRow.alias == name
        )
        return (await self._session.execute(stmt)).scalar_one_or_none()

    async def history(
        self, model_id: int, name: str, *, before: int | None, limit: int
    ) -> list[AliasHistoryRow]:
        """Moves newest first."""
        stmt = (
            select(AliasHistoryRow)
            .where(AliasHistoryRow.model_id == model_id, AliasHistoryRow.alias == name)
            .order_by(AliasHistoryRow.id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(AliasHistoryRow.id < before)
        return list(await self._session.scalars(stmt))
