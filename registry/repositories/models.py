"""SQL over models."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from registry.db import table_of, utcnow
from registry.errors import ModelAlreadyExists, ModelNotFound
from registry.repositories.base import Repository, glob_clause
from registry.tables import ModelRow

_models = table_of(ModelRow)
# Built once, a Core statement on the table (no ORM session synchronization to do).
NEXT_VERSION = (
    update(_models)
    .where(_models.c.name == bindparam("model"))
    .values(last_version=_models.c.last_version + 1, updated_at=bindparam("now"))
    .returning(_models.c.id, _models.c.last_version)
)


class ModelRepository(Repository):
    async def create(self, name: str, description: str, tags: dict[str, str]) -> ModelRow:
        row = ModelRow(name=name, description=description, tags=tags)
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise ModelAlreadyExists(name) from exc
        return row

    async def get(self, name: str, *, lock: bool = False) -> ModelRow:
        stmt = select(ModelRow).where(ModelRow.name == name)
        if lock:
            stmt = stmt.with_for_update()
        if (row := (await self._session.scalars(stmt)).one_or_none()) is None:
            raise ModelNotFound(name)
        return row

    async def get_id(self, name: str) -> int:
        stmt = select(ModelRow.id).where(ModelRow.name == name)
        if (model_id := await self._session.scalar(stmt)) is None:
            raise ModelNotFound(name)
        return model_id

    async def search(
        self,
        *,
        q: str | None,
        tags: dict[str, str],
        after: str | None,
        limit: int,
        globs: tuple[str, ...] = (),
    ) -> list[ModelRow]:
        """``globs``: only models whose name matches one (none: every model)."""
        stmt = select(ModelRow).order_by(ModelRow.name).limit(limit)
        if globs:
            stmt = stmt.where(glob_clause(ModelRow.name, globs))
        if q:
            stmt = stmt.where(ModelRow.name.contains(q.lower(), autoescape=True))
        for key, value in tags.items():
            stmt = stmt.where(ModelRow.tags[key].as_string() == value)
        if after is not None:
            stmt = stmt.where(ModelRow.name > after)
        return list(await self._session.scalars(stmt))

    async def next_version(self, name: str) -> tuple[int, int]:
        """Take the model's next version number: (model id, number).

        One ``UPDATE … RETURNING``: the row lock (Postgres) or the write lock (SQLite) makes
        concurrent creators queue, so numbers never repeat or skip.
        """
        params = {"model": name, "now": utcnow()}
        if (row := (await self._session.execute(NEXT_VERSION, params)).one_or_none()) is None:
            raise ModelNotFound(name)
        return row[0], row[1]

    async def touch(self, model_id: int) -> None:
        await self._session.execute(
            update(ModelRow).where(ModelRow.id == model_id).values(updated_at=utcnow())
        )

    async def delete(self, model_id: int) -> None:
        await self._session.execute(delete(ModelRow).where(ModelRow.id == model_id))
