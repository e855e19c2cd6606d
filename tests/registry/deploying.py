"""Helpers and fixtures for the deployment tests: a fresh database per test (Postgres: a
copy of a migrated template, so no deployment or worker of another test can claim or be
claimed), versions to deploy, and the worker side of the protocol spoken over HTTP."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench import pg
from registry.migrate import upgrade_to_head
from tests.registry.helpers import API, ready_version


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(pg.ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template(postgres_url: str) -> Iterator[str]:
    """A migrated database no one connects to: the template of each test's database."""
    name = f"mp_deploy_tmpl_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    try:
        upgrade_to_head(pg.database_url(name))
        yield name
    finally:
        pg.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "postgres":
        template = request.getfixturevalue("pg_template")
        name = f"mp_deploy_{uuid.uuid4().hex[:12]}"
        pg.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        request.addfinalizer(lambda: pg.drop_database(name))
        return pg.database_url(name)
    path = tmp_path / "registry.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


async def deployable(client: httpx.AsyncClient, model: str, data: bytes = b"weights") -> int:
    """A ready TorchScript-format version of ``model``."""
    return await ready_version(client, model, {"model.pt": data}, format="torchscript")


async def deploy(client: httpx.AsyncClient, model: str, **body: Any) -> dict[str, Any]:
    name = body.pop("name", f"d-{uuid.uuid4().hex[:8]}")
    response = await client.post(f"{API}/deployments", json={"name": name, "model": model, **body})
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


async def get_deployment(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"{API}/deployments/{name}")
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


async def register_worker(
    client: httpx.AsyncClient, *, gpus: list[int] | None = None, cpu_slots: int = 1
) -> str:
    body = {
        "name": "w",
        "host": "h",
        "address": "127.0.0.1",
        "gpus": gpus or [],
        "cpu_slots": cpu_slots,
    }
    response = await client.post(f"{API}/workers", json=body)
    assert response.status_code == 201, response.text
    worker: str = response.json()["id"]
    return worker


async def heartbeat(
    client: httpx.AsyncClient, worker: str, reports: dict[str, str | tuple[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Report replica states (``{id: state}`` or ``{id: (state, reason)}``); the assignments."""
    replicas = []
    for replica, report in (reports or {}).items():
        state, reason = report if isinstance(report, tuple) else (report, None)
        replicas.append({"replica_id": replica, "state": state, "reason": reason})
    response = await client.post(f"{API}/workers/{worker}/heartbeat", json={"replicas": replicas})
    assert response.status_code == 200, response.text
    assignments: list[dict[str, Any]] = response.json()["assignments"]
    return assignments


def replicas_of(deployment: dict[str, Any], revision: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = deployment["observed"]["replicas"]
    return [r for r in out if revision is None or r["revision"] == revision]


async def events_of(client: httpx.AsyncClient, model: str) -> list[dict[str, Any]]:
    page = (await client.get(f"{API}/events", params={"model": model, "limit": 1000})).json()
    items: list[dict[str, Any]] = page["items"]
    return items


async def announce(client: httpx.AsyncClient, replica: str, status: str = "ready") -> str:
    """What a serving process does as it starts: register its endpoint; the endpoint id."""
    body = {"url": f"http://127.0.0.1:9/{replica}", "replica_id": replica, "status": status}
    response = await client.post(f"{API}/endpoints", json=body)
    assert response.status_code == 201, response.text
    endpoint: str = response.json()["id"]
    return endpoint
