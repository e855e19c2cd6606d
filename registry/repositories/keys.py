"""SQL over API keys."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Row, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.db import table_of
from registry.errors import KeyNotFound
from registry.repositories.base import Repository
from registry.repositories.versions import DETAIL, Selector, detail_kind, detail_params
from registry.tables import ApiKeyRow

KEYS = table_of(ApiKeyRow)
# One Core statement for the per-request check: a column tuple, no ORM bookkeeping.
BY_PREFIX = select(
    KEYS.c.id,
    KEYS.c.name,
    KEYS.c.token_sha256,
    KEYS.c.scopes,
    KEYS.c.model_globs,
    KEYS.c.expires_at,
    KEYS.c.revoked_at,
    KEYS.c.last_used_at,
)
# `last_used_at` is written at most once per this period per key, not on every request.
LAST_USED_GRANULARITY = timedelta(seconds=60)


# The same columns, labelled, to ride along another statement (the hot version read).
KEY_COLUMNS = tuple(c.label(f"key_{c.name}") for c in BY_PREFIX.selected_columns)
_KEY_NAMES = tuple(c.name for c in BY_PREFIX.selected_columns)
DETAIL_WITH_KEY = {
    kind: stmt.add_columns(*KEY_COLUMNS).outerjoin(KEYS, KEYS.c.prefix == bindparam("key_prefix"))
    for kind, stmt in DETAIL.items()
}


async def read_detail_with_key(
    connection: AsyncConnection, model: str, selector: Selector, prefix: str
) -> tuple[list[Row[Any]], Any]:
    """The hot read and the key check in one round trip: the version's rows (as
    ``read_detail``) and the key's check columns (``None`` for no such key, or when no
    version matched: then nothing is answered from here anyway)."""
    params = {**detail_params(model, selector), "key_prefix": prefix}
    rows = list((await connection.execute(DETAIL_WITH_KEY[detail_kind(selector)], params)).all())
    if not rows or rows[0].key_id is None:
        return rows, None
    first = rows[0]
    return rows, SimpleNamespace(**{n: getattr(first, f"key_{n}") for n in _KEY_NAMES})


async def key_by_prefix(connection: AsyncConnection, prefix: str) -> Any:
    """The key's check columns, or ``None`` (the per-request lookup, on a bare connection)."""
    result = await connection.execute(BY_PREFIX.where(KEYS.c.prefix == prefix))
    return result.one_or_none()


async def touch_key(connection: AsyncConnection, key_id: str, now: datetime) -> None:
    """Record a use, unless one was recorded within ``LAST_USED_GRANULARITY``."""
    stale = now - LAST_USED_GRANULARITY
    await connection.execute(
        update(KEYS)
        .where(KEYS.c.id == key_id)
        .where(or_(KEYS.c.last_used_at.is_(None), KEYS.c.last_used_at < stale))
        .values(last_used_at=now)
    )


async def ended_keys(connection: AsyncConnection, since: datetime, now: datetime) -> list[str]:
    """Ids of the keys revoked, or expired, after ``since`` (and by ``now``), by id."""
    stmt = (
        select(KEYS.c.id)
        .where(
            or_(
                KEYS.c.revoked_at > since,
                and_(KEYS.c.expires_at > since, KEYS.c.expires_at <= now),
            )
        )
        .order_by(KEYS.c.id)
    )
    return list((await connection.execute(stmt)).scalars())


class KeyRepository(Repository):
    async def add(self, row: ApiKeyRow) -> ApiKeyRow:
        self._session.add(row)
        await self._session.flush()
        return row

    async def get(self, key_id: str, *, lock: bool = False) -> ApiKeyRow:
        stmt = select(ApiKeyRow).where(ApiKeyRow.id == key_id)
        if lock:
            stmt = stmt.with_for_update()
        if (row := (await self._session.scalars(stmt)).one_or_none()) is None:
            raise KeyNotFound(key_id)
        return row

    async def search(
        self, *, after: str | None, limit: int, include_revoked: bool
    ) -> list[ApiKeyRow]:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.id).limit(limit)
        if after is not None:
            stmt = stmt.where(ApiKeyRow.id > after)
        if not include_revoked:
            stmt = stmt.where(ApiKeyRow.revoked_at.is_(None))
        return list(await self._session.scalars(stmt))
