"""Garbage collection: what goes, what never goes, the grace period, one sweep at a time.

Run on SQLite + a folder and on Postgres + SeaweedFS (the two real deployments)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

from contract.schemas import FileSpec, VersionCreate
from registry.db import SessionFactory
from registry.repositories.events import Actor
from registry.repositories.gc import GC_LOCK_KEY
from registry.repositories.versions import BlobRepository
from registry.services.catalog import CatalogService
from registry.services.context import Context
from registry.services.gc import GcService
from registry.settings import Settings
from storage import ArtifactStore, FileSystemArtifactStore, S3ArtifactStore, blob_key
from tests.registry.conftest import client_for
from tests.registry.helpers import API, assert_problem, create_version, ready_version, sha

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def gc_store(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> ArtifactStore:
    """A store of the test's own: SeaweedFS with Postgres, a fresh folder with SQLite."""
    if database_url.startswith("postgresql"):
        store: S3ArtifactStore = request.getfixturevalue("s3_store")
        return store
    return FileSystemArtifactStore(tmp_path / "gc-artifacts")


def with_grace(settings: Settings, grace: float, **more: Any) -> Settings:
    return settings.model_copy(update={"gc_grace_s": grace, **more})


@pytest_asyncio.fixture(loop_scope="session")
async def gc_client(
    settings: Settings, sessions: SessionFactory, gc_store: ArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(with_grace(settings, 0), sessions, gc_store) as c:
        yield c


def unique(size: int = 64) -> bytes:
    return os.urandom(size)


async def gc(client: httpx.AsyncClient, *, dry_run: bool) -> dict[str, Any]:
    answer = await client.post(f"{API}/gc", params={"dry_run": str(dry_run).lower()})
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


@BOTH
async def test_gc_removes_only_unreferenced_blobs(
    gc_client: httpx.AsyncClient,
    settings: Settings,
    sessions: SessionFactory,
    gc_store: ArtifactStore,
    model: str,
) -> None:
    kept_ready, kept_pending, kept_archived = unique(), unique(), unique()
    deleted, failed_upload = unique(100), unique(200)
    v1 = await ready_version(gc_client, model, {"a.bin": kept_ready})
    assert (
        await gc_client.put(f"{API}/models/{model}/aliases/prod", json={"version": v1})
    ).is_success
    v2 = await ready_version(gc_client, model, {"b.bin": deleted})
    assert (await gc_client.delete(f"{API}/models/{model}/versions/{v2}")).status_code == 204
    pending = await create_version(gc_client, model, {"c.bin": kept_pending})
    put = await gc_client.put(pending["files"][0]["upload"]["url"], content=kept_pending)
    assert put.status_code == 200
    v4 = await ready_version(gc_client, model, {"d.bin": kept_archived})
    assert (await gc_client.post(f"{API}/models/{model}/versions/{v4}/archive")).is_success
    # bytes written, then the upload died before any row referred to them
    await asyncio.to_thread(gc_store.put, blob_key(sha(failed_upload)), io.BytesIO(failed_upload))

    # within the grace period nothing goes: those rows may be about to commit
    async with client_for(with_grace(settings, 3600), sessions, gc_store) as patient:
        report = await gc(patient, dry_run=False)
    assert report["blobs"] == [] and report["kept_recent"] == 2 and not report["skipped"]

    dry = await gc(gc_client, dry_run=True)
    garbage = {sha(deleted): len(deleted), sha(failed_upload): len(failed_upload)}
    assert {b["sha256"]: b["size"] for b in dry["blobs"]} == garbage
    assert dry["bytes"] == 300 and dry["dry_run"]
    assert all(gc_store.stat(blob_key(d)) is not None for d in garbage)  # nothing removed

    done = await gc(gc_client, dry_run=False)
    assert {b["sha256"] for b in done["blobs"]} == set(garbage) and done["bytes"] == 300
    assert all(gc_store.stat(blob_key(d)) is None for d in garbage)
    for data in (kept_ready, kept_pending, kept_archived):
        assert gc_store.stat(blob_key(sha(data))) is not None
    got = await gc_client.get(f"{API}/models/{model}/versions/@prod/files/a.bin")
    assert got.content == kept_ready
    # the deleted blob's row went with it: a new version must upload those bytes again
    again = await create_version(gc_client, model, {"b.bin": deleted})
    assert again["files"][0]["present"] is False
    assert (await gc(gc_client, dry_run=True))["blobs"] == []
    events = (await gc_client.get(f"{API}/events", params={"action": "gc.collected"})).json()
    assert events["items"][-1]["after"]["bytes"] >= 300


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_abandoned_direct_uploads_are_aborted_after_their_ttl(
    settings: Settings, sessions: SessionFactory, s3_store: S3ArtifactStore, model: str
) -> None:
    size = settings.multipart_threshold
    data = unique(size)
    async with client_for(with_grace(settings, 0), sessions, s3_store) as client:
        pending = await create_version(client, model, {"big.bin": data})
        url = pending["files"][0]["upload"]["url"]
        started = await client.post(f"{url}/multipart")
        assert started.status_code == 200, started.text
        upload_id = started.json()["upload_id"]
        fresh = await gc(client, dry_run=True)
        assert all(u["upload_id"] != upload_id for u in fresh["uploads"])
    time.sleep(0.2)
    impatient = with_grace(settings, 0, upload_ttl_s=0.1)
    async with client_for(impatient, sessions, s3_store) as client:
        dry = await gc(client, dry_run=True)
        assert upload_id in [u["upload_id"] for u in dry["uploads"]]
        done = await gc(client, dry_run=False)
        assert upload_id in [u["upload_id"] for u in done["uploads"]]
        assert_problem(await client.post(f"{url}/multipart/complete"), 409)
        # the version is still pending: the client starts a fresh upload and carries on
        assert (await client.post(f"{url}/multipart")).json()["upload_id"] != upload_id


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_one_sweep_at_a_time_across_replicas(
    gc_client: httpx.AsyncClient, postgres_url: str
) -> None:
    url = make_url(postgres_url)
    other = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY)
        report = await gc(gc_client, dry_run=False)
        assert report["skipped"] and report["blobs"] == []
        await other.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)
        assert not (await gc(gc_client, dry_run=True))["skipped"]
    finally:
        await other.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_version_created_during_the_sweep_keeps_its_blob(
    gc_client: httpx.AsyncClient,
    settings: Settings,
    sessions: SessionFactory,
    gc_store: ArtifactStore,
    model: str,
) -> None:
    """A version that found the blob stored holds a KEY SHARE lock on its row until it
    commits; the sweep waits for it, then sees the new reference and keeps the blob."""
    data = unique()
    number = await ready_version(gc_client, model, {"r.bin": data})
    assert (await gc_client.delete(f"{API}/models/{model}/versions/{number}")).status_code == 204
    ctx = Context(sessions, gc_store, with_grace(settings, 0), Actor())
    body = VersionCreate(files=[FileSpec(path="r.bin", size=len(data), sha256=sha(data))])
    async with sessions.begin() as session:
        created = await CatalogService(ctx)._create_version(session, model, body)
        assert created.files[0].present
        sweep = asyncio.create_task(GcService(ctx).collect(dry_run=False))
        await asyncio.sleep(1.0)
        assert not sweep.done()  # waiting for this transaction's lock
    report = await asyncio.wait_for(sweep, 30)
    assert sha(data) not in {b["sha256"] for b in report.model_dump()["blobs"]}
    assert gc_store.stat(blob_key(sha(data))) is not None
    async with sessions() as session:
        assert await BlobRepository(session).stored({sha(data)}) == {sha(data)}
