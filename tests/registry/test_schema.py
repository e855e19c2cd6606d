"""The migrations are the schema: they match the ORM rows, on SQLite and on Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

import registry.tables  # noqa: F401  (registers the rows)
from registry.db import Base, make_engine
from registry.settings import Settings


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_the_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_diff) == []
    await engine.dispose()


def test_settings_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    assert settings.storage_url == str(tmp_path / "artifacts")
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)


def test_settings_come_from_modelplane_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_HOME", str(tmp_path))
    monkeypatch.setenv("MODELPLANE_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("MODELPLANE_MAX_UPLOAD_BYTES", "1024")
    monkeypatch.setenv("MODELPLANE_WORKERS", "4")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.max_upload_bytes == 1024 and settings.workers == 4
    assert settings.database_url.endswith(f"{tmp_path}/registry.db")
