"""Throwaway Postgres databases for tests and benchmarks (the real server on this machine)."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import asyncpg

PG_HOST = os.environ.get("MODELPLANE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MODELPLANE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MODELPLANE_TEST_PG_USER", "postgres")
ADMIN_DSN = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop (safe inside a running loop)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def postgres_unavailable() -> str | None:
    """Why Postgres can't be used, or ``None`` when it can."""
    try:
        run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"Postgres at {PG_HOST}:{PG_PORT} is unreachable: {exc!r}"
    return None


def database_url(name: str, *, host: str = PG_HOST, port: int = PG_PORT) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{host}:{port}/{name}"


def create_database(name: str) -> None:
    run(_admin(f'CREATE DATABASE "{name}"'))


def drop_database(name: str) -> None:
    run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def throwaway_database(prefix: str = "mp_test") -> Iterator[str]:
    """A fresh, empty database (its SQLAlchemy asyncpg URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(name)
    try:
        yield database_url(name)
    finally:
        drop_database(name)
