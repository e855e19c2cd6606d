"""SQL over direct multipart uploads in progress."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from registry.repositories.base import Repository
from registry.tables import UploadRow


class UploadRepository(Repository):
    async def find(self, version_id: int, path: str) -> UploadRow | None:
        stmt = select(UploadRow).where(UploadRow.version_id == version_id, UploadRow.path == path)
        return (await self._session.scalars(stmt)).one_or_none()

    async def add(self, row: UploadRow) -> bool:
        """Record the upload; ``False`` if another request recorded one for the file first."""
        try:
            async with self._session.begin_nested():
                self._session.add(row)
        except IntegrityError:
            return False
        return True

    async def delete(self, upload_id: int) -> None:
        await self._session.execute(delete(UploadRow).where(UploadRow.id == upload_id))

    async def for_version(self, version_id: int) -> list[UploadRow]:
        stmt = select(UploadRow).where(UploadRow.version_id == version_id)
        return list(await self._session.scalars(stmt))
