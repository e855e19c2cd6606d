"""The hot-read front answers exactly what the documented FastAPI route answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from registry.app import create_app
from registry.db import SessionFactory
from registry.fastpath import FastVersionReads
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.helpers import API, create_version, ready_version


@pytest_asyncio.fixture(loop_scope="session")
async def fast(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    app = FastVersionReads(create_app(settings, sessions=sessions, store=fs_artifacts))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as c:
        yield c


async def same_answer(plain: httpx.AsyncClient, fast: httpx.AsyncClient, path: str) -> None:
    want, got = await plain.get(path), await fast.get(path)
    assert got.status_code == want.status_code
    for header in ("content-type", "content-length", "location"):
        assert got.headers.get(header) == want.headers.get(header)
    assert got.content == want.content


@pytest.mark.parametrize("selector", ["1", "2", "latest", "@production", "@staging"])
async def test_fast_read_is_byte_identical_to_the_route(
    client: httpx.AsyncClient, fast: httpx.AsyncClient, model: str, selector: str
) -> None:
    await ready_version(client, model, {"model.pt": b"one"}, format="torchscript")
    await ready_version(
        client,
        model,
        {"b/weights.bin": b"two", "a.json": "é ✓".encode()},
        description="ünïcode ✓",
        tags={"team": "vision"},
        metadata={"lr": 0.001, "big": 1e300, "nested": {"k": [1, None, True]}},
        signature={"inputs": [{"name": "x"}]},
        source="s3://bucket/run/7",
    )
    await create_version(client, model, {"pending.bin": b"three"})  # pending: never latest
    for alias, version in (("production", 2), ("staging", 1)):
        put = await client.put(f"{API}/models/{model}/aliases/{alias}", json={"version": version})
        assert put.status_code == 200, put.text
    await same_answer(client, fast, f"{API}/models/{model}/versions/{selector}")


async def test_fast_read_of_a_pending_version_offers_the_same_uploads(
    client: httpx.AsyncClient, fast: httpx.AsyncClient, model: str
) -> None:
    await create_version(client, model, {"x.bin": b"never uploaded"})
    await same_answer(client, fast, f"{API}/models/{model}/versions/1")


@pytest.mark.parametrize(
    "path",
    [
        "/models/no-such-model/versions/@production",  # unknown model
        "/models/{model}/versions/@nope",  # unknown alias
        "/models/{model}/versions/99",  # unknown number
        "/models/{model}/versions/latest",  # nothing ready yet
        "/models/{model}/versions/v1",  # bad selector
        "/models/{model}/versions/@Bad",  # bad alias name
        "/models/Bad_Name/versions/1",  # bad model name
        "/models/{model}/versions/1/",  # trailing slash
    ],
)
async def test_fast_read_errors_are_the_routes_problems(
    client: httpx.AsyncClient, fast: httpx.AsyncClient, model: str, path: str
) -> None:
    await create_version(client, model, {"x.bin": b"pending"})
    await same_answer(client, fast, API + path.format(model=model))


async def test_other_requests_pass_through(
    client: httpx.AsyncClient, fast: httpx.AsyncClient, model: str
) -> None:
    await ready_version(client, model, {"model.pt": b"one"})
    for path in (f"{API}/models/{model}", f"{API}/models/{model}/versions", "/openapi.json"):
        await same_answer(client, fast, path)
    head = await fast.head(f"{API}/models/{model}/versions/1")
    assert head.status_code == (await client.head(f"{API}/models/{model}/versions/1")).status_code


async def test_found_versions_are_answered_by_the_front_itself(
    client: httpx.AsyncClient,
    settings: Settings,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    model: str,
) -> None:
    """Behind the front, an app with the same state but no routes: only misses reach it."""
    app = create_app(settings, sessions=sessions, store=fs_artifacts)
    bare = FastAPI()
    bare.state = app.state
    front = FastVersionReads(bare)
    transport = httpx.ASGITransport(app=front)
    await ready_version(client, model, {"model.pt": b"one"})
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as c:
        found = await c.get(f"{API}/models/{model}/versions/latest")
        assert found.status_code == 200 and found.json()["version"] == 1
        assert (await c.get(f"{API}/models/{model}/versions/2")).status_code == 404
