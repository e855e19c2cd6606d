"""Header and body limits, error bodies that leak nothing, CORS off by default, and the
security headers of the pages a browser renders."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from bench import pg
from registry.app import create_app
from registry.db import SessionFactory, make_engine, make_session_factory
from registry.migrate import upgrade_to_head
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.helpers import API, assert_problem, manifest

LIMIT = 64 * 2**10
LEAKS = ("Traceback", "SELECT", "FROM ", "sqlalchemy", "asyncpg", "sqlite", "no such", "column")


def client_of(settings: Settings, sessions: SessionFactory, store: object) -> httpx.AsyncClient:
    app = create_app(settings, sessions=sessions, store=store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://registry.test")


@pytest_asyncio.fixture(loop_scope="session")
async def limited(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    small = settings.model_copy(update={"max_request_bytes": LIMIT, "max_header_bytes": 8192})
    async with client_of(small, sessions, fs_artifacts) as client:
        yield client


async def test_oversized_headers_are_431(limited: httpx.AsyncClient) -> None:
    answer = await limited.get(f"{API}/models", headers={"X-Big": "a" * 10_000})
    assert_problem(answer, 431, "headers-too-large")
    many = {f"X-H{i}": "1" for i in range(150)}
    assert_problem(await limited.get(f"{API}/models", headers=many), 431)


async def test_oversized_bodies_are_413_declared_or_streamed(
    limited: httpx.AsyncClient, model: str
) -> None:
    big = {"files": manifest({f"f{i}.bin": b"x" for i in range(2000)})}
    answer = await limited.post(f"{API}/models/{model}/versions", json=big)
    assert_problem(answer, 413, "request-too-large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"description": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    answer = await limited.patch(f"{API}/models/{model}", content=chunks())
    assert_problem(answer, 413, "request-too-large")
    described = await limited.get(f"{API}/models/{model}")
    assert described.json()["description"] == ""  # nothing half-applied


async def test_file_uploads_are_bounded_by_the_upload_limit_not_the_body_limit(
    limited: httpx.AsyncClient, model: str
) -> None:
    data = b"z" * (LIMIT * 2)
    created = await limited.post(
        f"{API}/models/{model}/versions", json={"files": manifest({"w.bin": data})}
    )
    assert created.status_code == 201, created.text
    put = await limited.put(f"{API}/models/{model}/versions/1/files/w.bin", content=data)
    assert put.status_code == 200, put.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_database_errors_leak_no_sql_or_trace_sqlite(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> None:
    async with sessions.begin() as session:
        await session.execute(text("DROP TABLE alias_history"))
        await session.execute(text("DROP TABLE aliases"))
    async with client_of(settings, sessions, fs_artifacts) as client:
        created = await client.post(f"{API}/models", json={"name": "broken"})
        answer = await client.get(f"{API}/models/broken/aliases")
    assert created.status_code == 201
    assert answer.status_code >= 500
    for leak in LEAKS:
        assert leak not in answer.text, answer.text


async def test_database_errors_leak_no_sql_or_trace_postgres(
    postgres_url: str, fs_artifacts: FileSystemArtifactStore
) -> None:
    """A schema that no longer matches the code: the 500 says nothing of the SQL."""
    with pg.throwaway_database() as url:
        upgrade_to_head(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        async with sessions.begin() as session:
            await session.execute(text("ALTER TABLE models DROP COLUMN description"))
        settings = Settings(database_url=url, auth_enabled=False, _env_file=None)  # type: ignore[call-arg]
        async with client_of(settings, sessions, fs_artifacts) as client:
            answer = await client.get(f"{API}/models")
        await engine.dispose()
    body = assert_problem(answer, 500, "internal-error")
    assert body["detail"] == "an unexpected error occurred; it has been logged"
    for leak in LEAKS:
        assert leak not in answer.text, answer.text


async def test_cors_is_off_unless_origins_are_configured(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> None:
    preflight = {
        "Origin": "https://dash.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    async with client_of(settings, sessions, fs_artifacts) as client:
        answer = await client.options(f"{API}/models", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        plain = await client.get(f"{API}/models", headers={"Origin": "https://dash.example"})
        assert "access-control-allow-origin" not in plain.headers
    allowed = settings.model_copy(
        update={"cors_origins": "https://dash.example, https://other.example", "auth_enabled": True}
    )
    async with client_of(allowed, sessions, fs_artifacts) as client:
        answer = await client.options(f"{API}/models", headers=preflight)
        assert answer.status_code == 200  # a preflight carries no key: answered before auth
        assert answer.headers["access-control-allow-origin"] == "https://dash.example"
        assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        evil = await client.options(
            f"{API}/models", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in evil.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/ui", "/ui/models/x"])
async def test_browser_pages_carry_security_headers(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


async def test_api_answers_need_no_browser_headers(client: httpx.AsyncClient) -> None:
    answer = await client.get("/healthz")
    assert "content-security-policy" not in answer.headers
