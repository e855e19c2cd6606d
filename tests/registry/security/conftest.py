"""Fixtures for tests with authentication on: an app, clients, and keys minted for them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from contract.schemas import KeyCreate, Scope
from registry.app import create_app
from registry.db import SessionFactory
from registry.fastpath import FastVersionReads
from registry.principal import ANONYMOUS
from registry.repositories.events import Actor
from registry.services.keys import KeyService
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.helpers import API

Mint = Callable[..., Awaitable[dict[str, Any]]]
SCOPES = [s.value for s in Scope]


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth_enabled": True})


@pytest.fixture
def app(
    auth_settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> FastAPI:
    return create_app(auth_settings, sessions=sessions, store=fs_artifacts)


@pytest_asyncio.fixture(loop_scope="session")
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=FastVersionReads(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as c:
        yield c


@pytest.fixture
def mint(sessions: SessionFactory) -> Mint:
    async def mint(*scopes: str, **extra: Any) -> dict[str, Any]:
        body = KeyCreate.model_validate(
            {"name": f"k-{'-'.join(scopes)}", "scopes": scopes, **extra}
        )
        service = KeyService(sessions, Actor(name="tests"), ANONYMOUS)
        return (await service.create_key(body)).model_dump(mode="json")

    return mint


def bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['token']}"}


@pytest_asyncio.fixture(loop_scope="session")
async def admin(mint: Mint) -> dict[str, str]:
    return bearer(await mint("admin"))


@pytest_asyncio.fixture(loop_scope="session")
async def as_admin(app: FastAPI, admin: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://registry.test", headers=admin
    ) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def model(anon: httpx.AsyncClient, admin: dict[str, str]) -> str:
    name = f"m-{uuid.uuid4().hex[:10]}"
    answer = await anon.post(f"{API}/models", json={"name": name}, headers=admin)
    assert answer.status_code == 201, answer.text
    return name
