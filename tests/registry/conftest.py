"""Registry fixtures: migrated databases (SQLite per test, Postgres per session), apps, clients."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from bench import pg
from registry.app import create_app
from registry.db import SessionFactory, make_engine, make_session_factory
from registry.migrate import upgrade_to_head
from registry.settings import Settings
from storage import ArtifactStore, FileSystemArtifactStore

MAX_UPLOAD = 8 * 2**20


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One event loop for the whole session, so session-scoped engines stay usable.
    here = Path(__file__).parent
    for item in items:
        if pytest_asyncio.is_async_test(item) and here in Path(item.path).parents:
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if (reason := pg.postgres_unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with pg.throwaway_database() as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "registry.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    path = tmp_path / "registry.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        home=tmp_path,
        database_url=database_url,
        storage_url=str(tmp_path / "artifacts"),
        max_upload_bytes=MAX_UPLOAD,
        multipart_threshold=6 * 2**20,
        multipart_part_size=5 * 2**20,
        auth_enabled=False,  # tests about keys and scopes turn it on (test_auth.py)
    )


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(settings: Settings) -> AsyncIterator[SessionFactory]:
    engine = make_engine(settings.database_url, pool_size=10, max_overflow=20)
    yield make_session_factory(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def shared_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pg-artifacts")


@pytest.fixture
def fs_artifacts(
    tmp_path: Path, database_url: str, shared_artifacts: Path
) -> FileSystemArtifactStore:
    """The folder store. Postgres tests share one database (its blobs table), so they
    share one folder too; SQLite tests get a fresh pair each."""
    if database_url.startswith("postgresql"):
        return FileSystemArtifactStore(shared_artifacts)
    return FileSystemArtifactStore(tmp_path / "artifacts")


def client_for(
    settings: Settings, sessions: SessionFactory, store: ArtifactStore
) -> httpx.AsyncClient:
    app = create_app(settings, sessions=sessions, store=store)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://registry.test")


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, sessions, fs_artifacts) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def model(client: httpx.AsyncClient) -> str:
    """A fresh model name, registered (names are unique per test: Postgres is shared)."""
    name = f"m-{uuid.uuid4().hex[:10]}"
    response = await client.post("/api/v1/models", json={"name": name})
    assert response.status_code == 201, response.text
    return name
