"""SQLAlchemy base, engine and session factories, read-only sessions and connections, and
the dialect quirks (SQLite's here; Postgres's autocommit reads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Integer,
    MetaData,
    Table,
    TypeDecorator,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SessionFactory: TypeAlias = async_sessionmaker[AsyncSession]

# BIGINT on Postgres; INTEGER on SQLite so the key aliases the rowid and autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(row: type[Base]) -> Table:
    """The row class's table, for Core statements (typed: ``__table__`` is a FromClause)."""
    table = row.__table__
    assert isinstance(table, Table)
    return table


def utcnow() -> datetime:
    return datetime.now(UTC)


def async_url(url: str) -> str:
    """The URL with an async driver: ``postgresql://`` → asyncpg, ``sqlite://`` → aiosqlite."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


def make_engine(
    url: str, *, pool_size: int = 16, max_overflow: int = 0, pre_ping: bool = False
) -> AsyncEngine:
    """An async engine; nothing connects until first use."""
    url = async_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        _setup_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=3600,
    )


def make_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


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


def _setup_sqlite(engine: AsyncEngine) -> None:
    """Foreign keys on, WAL, wait on locks, and writes that serialize.

    The sqlite3 driver defers BEGIN until the first write, so two transactions can both read
    and then fail to upgrade their locks ("database is locked"). We take the driver's
    transaction handling away and open every transaction with ``BEGIN IMMEDIATE``, which
    waits (``busy_timeout``) for the single writer slot instead.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA foreign_keys=ON",
            "PRAGMA journal_mode=WAL",
            "PRAGMA busy_timeout=30000",
            "PRAGMA synchronous=NORMAL",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
