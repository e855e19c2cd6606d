"""Health, readiness, the database going away and coming back, and the OpenAPI document."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from bench import pg
from contract.schemas import KeyCreate, Scope
from registry.app import create_app
from registry.services.keys import mint_key
from registry.settings import Settings
from tests.registry.helpers import API, assert_problem
from tests.registry.proxy import TcpProxy


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "store": "ok"}


async def test_database_down_is_503_and_recovers(tmp_path: Path, postgres_url: str) -> None:
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or pg.PG_HOST, url.port or pg.PG_PORT)
    await proxy.start()
    settings = Settings(
        home=tmp_path,
        database_url=pg.database_url(url.database or "", port=proxy.port),
        storage_url=str(tmp_path / "artifacts"),
    )
    app = create_app(settings)  # its own engine and pool, as in production; auth on
    key = await mint_key(postgres_url, KeyCreate(name="ops", scopes=[Scope.admin]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    name = f"dbdown-{os.urandom(4).hex()}"
    headers = {"Authorization": f"Bearer {key.token}"}  # checked against the database too
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client,
    ):
        assert (await client.post(f"{API}/models", json={"name": name})).status_code == 201
        await proxy.stop()
        down = await client.get(f"{API}/models/{name}")
        assert_problem(down, 503, "database-unavailable")
        assert down.headers["retry-after"]
        assert_problem(await client.get("/readyz"), 503, "database-unavailable")
        await proxy.start()  # same port: the database is back
        # Without pre-ping a request may still meet a connection the outage killed; that
        # invalidates the pool, and the next requests reconnect by themselves.
        statuses = [(await client.get(f"{API}/models/{name}")).status_code for _ in range(3)]
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
        assert (await client.get("/readyz")).status_code == 200
    await proxy.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_openapi_is_complete(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "Problem" in spec["components"]["schemas"]
    operation_ids = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            operation_ids.append(op["operationId"])
            assert op.get("summary") and op.get("tags") and op.get("description"), (path, method)
            if path.startswith(API) or path == "/readyz":
                errors = [s for s in op["responses"] if s.startswith(("4", "5"))]
                assert errors, (path, method)
                for status in errors:
                    content = op["responses"][status]["content"]
                    ref = content["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/Problem"), (path, method, status)
    assert len(operation_ids) == len(set(operation_ids))
    assert {"create_version", "upload_version", "download_file", "rollback_alias"} <= set(
        operation_ids
    )
