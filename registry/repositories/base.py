"""What every repository shares: the session, keyset cursors, dialect-aware inserts."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from sqlalchemy import ColumnElement, false, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import InvalidCursor


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    @property
    def _dialect(self) -> str:
        return self._session.get_bind().dialect.name

    def _insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can ``on_conflict_do_nothing()`` on both dialects."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def glob_clause(column: Any, globs: tuple[str, ...]) -> ColumnElement[bool]:
    """``column`` matches one of the fnmatch globs (``*``, ``?``), as SQL ``LIKE``."""
    if not globs:
        return false()
    patterns = [
        g.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        .replace("*", "%").replace("?", "_")
        for g in globs
    ]  # fmt: skip
    return or_(*(column.like(p, escape="\\") for p in patterns))


def encode_cursor(value: Any) -> str:
    """An opaque page cursor: base64url of the last key seen."""
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type) -> Any:
    if cursor is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("the cursor is not one this API gave out") from exc
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidCursor("the cursor is not one this API gave out")
    return value
