"""What the services share: their context, selectors, and turning rows into schemas."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from contract.paths import API_PREFIX
from contract.schemas import (
    AliasName,
    FileOut,
    MultipartOffer,
    Page,
    UploadInfo,
    VersionOut,
    VersionStatus,
)
from registry.db import SessionFactory
from registry.errors import InvalidSelector
from registry.principal import ANONYMOUS, Principal
from registry.repositories.base import encode_cursor
from registry.repositories.events import Actor
from registry.repositories.versions import Selector
from registry.settings import Settings
from storage.base import ArtifactStore, DirectUploadStore

if TYPE_CHECKING:  # registry.metrics imports registry.auth, which imports services
    from registry.metrics import ControlPlaneMetrics

_ALIAS = re.compile(r"^@[a-z0-9][a-z0-9._-]{0,62}$")
MAX_PARTS = 10_000

__all__ = ["Actor", "AliasName", "Context", "Selector"]


@dataclass(frozen=True)
class Context:
    """What a service needs: built per request by ``deps.py`` from app state."""

    sessions: SessionFactory
    store: ArtifactStore
    settings: Settings
    actor: Actor
    principal: Principal = ANONYMOUS  # the caller's key (every scope when auth is off)
    metrics: ControlPlaneMetrics | None = None

    @property
    def direct(self) -> DirectUploadStore | None:
        return self.store if isinstance(self.store, DirectUploadStore) else None

    def part_size(self, size: int) -> int:
        """The settings' part size, grown so no file needs more than S3's 10,000 parts."""
        return max(self.settings.multipart_part_size, math.ceil(size / MAX_PARTS))


def parse_selector(raw: str) -> Selector:
    """``3``, ``latest`` or ``@production``."""
    if raw.isdigit() and raw.isascii():
        return int(raw)
    if raw == "latest" or _ALIAS.match(raw):
        return raw
    raise InvalidSelector(
        f"{raw!r} is not a version: use a number, 'latest' or '@alias' (e.g. '@production')"
    )


def file_url(model: str, version: int, path: str) -> str:
    return f"{API_PREFIX}/models/{model}/versions/{version}/files/{quote(path)}"


def _upload_info(ctx: Context, model: str, version: int, path: str, size: int) -> UploadInfo:
    url = file_url(model, version, path)
    offer = None
    if ctx.direct is not None and size >= ctx.settings.multipart_threshold:
        part_size = ctx.part_size(size)
        offer = MultipartOffer(
            url=f"{url}/multipart", part_size=part_size, parts=max(1, math.ceil(size / part_size))
        )
    return UploadInfo(url=url, multipart=offer)


def version_out(ctx: Context, model: str, rows: list[Row[Any]] | Any) -> VersionOut:
    """A version from ``VersionRepository.detail`` rows (one per file, same version)."""
    first = rows[0]
    pending = first.status == VersionStatus.pending
    files = [
        FileOut(
            path=r.path,
            size=r.size,
            sha256=r.sha256,
            present=r.stored is not None,
            upload=_upload_info(ctx, model, first.version, r.path, r.size)
            if pending and r.stored is None
            else None,
        )
        for r in rows
        if r.path is not None
    ]
    return VersionOut(
        model=model,
        version=first.version,
        status=first.status,
        format=first.format,
        description=first.description,
        tags=first.tags,
        metadata=first.metadata_,
        signature=first.signature,
        source=first.source,
        created_by=first.created_by,
        created_at=first.created_at,
        updated_at=first.updated_at,
        files=files,
    )


R = TypeVar("R")
T = TypeVar("T")


def to_page(rows: list[R], limit: int, key: Callable[[R], Any], out: Callable[[R], T]) -> Page[T]:
    """Rows fetched with ``limit + 1``: the extra one only says another page exists."""
    cursor = encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None
    return Page[T](items=[out(r) for r in rows[:limit]], next_cursor=cursor)


@asynccontextmanager
async def reading(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session for reads only. On Postgres it runs in autocommit: no BEGIN/ROLLBACK
    round trips around the one SELECT a hot read needs."""
    async with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


@asynccontextmanager
async def reading_connection(sessions: SessionFactory) -> AsyncIterator[AsyncConnection]:
    """A bare Core connection from the sessions' engine, for a one-statement read. On the
    hot read an ORM session's bookkeeping costs more than the query itself; autocommit on
    Postgres as in ``reading``."""
    bind = sessions.kw["bind"]
    if isinstance(bind, AsyncConnection):  # sessions bound to one connection (tests)
        yield bind
        return
    assert isinstance(bind, AsyncEngine)
    async with bind.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
        yield connection
