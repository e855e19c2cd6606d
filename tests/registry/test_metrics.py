"""Control-plane metrics and request ids: every route counted by template (the hot-read
front and the stable URL too), errors by kind, bytes moved, gauges from the database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from registry.app import create_app
from registry.db import SessionFactory
from registry.fastpath import FastVersionReads
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.helpers import API, ready_version

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
COUNT = "modelplane_http_request_duration_seconds_count"


@pytest_asyncio.fixture(loop_scope="session")
async def front(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    """The app as served: behind the hot-read front (its own metrics, fresh per test)."""
    app = FastVersionReads(create_app(settings, sessions=sessions, store=fs_artifacts))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as c:
        yield c


async def scrape(client: httpx.AsyncClient) -> Samples:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_route_template_and_status(
    front: httpx.AsyncClient, model: str
) -> None:
    data = os.urandom(1000)
    number = await ready_version(front, model, {"w.bin": data})
    for _ in range(3):  # the hot read, answered before FastAPI
        assert (await front.get(f"{API}/models/{model}/versions/{number}")).status_code == 200
    assert (await front.get(f"{API}/models/{model}/versions/99")).status_code == 404
    got = await front.get(f"{API}/models/{model}/versions/{number}/files/w.bin")
    assert got.content == data
    assert (await front.post(f"{API}/models", json={"name": "Bad Name"})).status_code == 422
    assert (await front.get("/serve/nope/v2/health/ready")).status_code == 404
    assert (await front.get("/no/such/path")).status_code == 404
    ui = await front.get("/ui/")

    found = await scrape(front)
    read = f"{API}/models/{{name}}/versions/{{v}}"
    assert value(found, COUNT, method="GET", route=read, status="200") == 3
    assert value(found, COUNT, method="GET", route=read, status="404") == 1
    assert value(found, COUNT, method="POST", route=f"{API}/models", status="422") == 1
    put = f"{API}/models/{{name}}/versions/{{v}}/files/{{path:path}}"
    assert value(found, COUNT, method="PUT", route=put, status="200") == 1
    assert value(found, COUNT, method="GET", route="/serve/{deployment}", status="404") == 1
    assert value(found, COUNT, method="GET", route="unmatched", status="404") == 1
    assert value(found, COUNT, method="GET", route="/ui/*", status=str(ui.status_code)) == 1
    assert value(found, "modelplane_errors_total", kind="version-not-found") == 1
    assert value(found, "modelplane_errors_total", kind="validation-error") == 1
    assert value(found, "modelplane_upload_bytes_total", kind="proxied") == 1000
    assert value(found, "modelplane_upload_duration_seconds_count", kind="proxied") == 1
    assert value(found, "modelplane_download_bytes_total") == 1000
    assert value(found, "modelplane_versions_created_total", kind="manifest") == 1
    assert value(found, "modelplane_versions", status="ready") >= 1
    assert value(found, "modelplane_database_up") == 1
    assert ("modelplane_webhook_outbox_depth", frozenset()) in found


async def test_one_shot_uploads_are_counted(client: httpx.AsyncClient, model: str) -> None:
    files = {"file": ("m.bin", os.urandom(300))}
    answer = await client.post(f"{API}/models/{model}/versions:upload", files=files)
    assert answer.status_code == 201, answer.text
    found = await scrape(client)
    assert value(found, "modelplane_upload_bytes_total", kind="oneshot") == 300
    assert value(found, "modelplane_versions_created_total", kind="oneshot") == 1


async def test_request_ids_are_answered_back_and_recorded(
    front: httpx.AsyncClient, model: str
) -> None:
    given = await front.put(
        f"{API}/models/{model}", json={}, headers={"X-Request-ID": "trace-me-1"}
    )
    assert given.headers["x-request-id"] == "trace-me-1"
    made = await front.patch(f"{API}/models/{model}", json={"description": "d"})
    generated = made.headers["x-request-id"]
    assert made.status_code == 200 and len(generated) == 32
    insane = await front.get(f"{API}/models/{model}", headers={"X-Request-ID": "a b"})
    assert insane.headers["x-request-id"] != "a b"  # not printable-without-spaces: replaced
    events = (await front.get(f"{API}/events", params={"model": model})).json()["items"]
    updated = [e for e in events if e["action"] == "model.updated"]
    assert updated[-1]["request_id"] == generated
    # the hot read answers a caller's id back too
    number = await ready_version(front, model, {"x.bin": os.urandom(8)})  # Postgres is shared
    read = await front.get(
        f"{API}/models/{model}/versions/{number}", headers={"X-Request-ID": "hot-1"}
    )
    assert read.status_code == 200 and read.headers["x-request-id"] == "hot-1"
