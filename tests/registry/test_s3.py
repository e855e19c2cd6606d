"""Uploads and downloads against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from registry.db import SessionFactory
from registry.settings import Settings
from storage import S3ArtifactStore, blob_key
from tests.registry.conftest import client_for
from tests.registry.helpers import API, assert_problem, create_version, sha

PART = 5 * 2**20


@pytest_asyncio.fixture(loop_scope="session")
async def s3_client(
    settings: Settings, sessions: SessionFactory, s3_store: S3ArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, sessions, s3_store) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def s3_model(s3_client: httpx.AsyncClient) -> str:
    name = f"s3-{os.urandom(5).hex()}"
    assert (await s3_client.post(f"{API}/models", json={"name": name})).status_code == 201
    return name


def unique(model: str, size: int) -> bytes:
    """Bytes no other test stores (Postgres tests share the blobs table)."""
    seed = model.encode() + os.urandom(8)
    return (seed * (size // len(seed) + 1))[:size]


async def test_proxied_upload_range_and_redirect(
    s3_client: httpx.AsyncClient, s3_model: str, s3_store: S3ArtifactStore
) -> None:
    data = unique(s3_model, 3 * 2**20 + 17)
    out = await create_version(s3_client, s3_model, {"w.bin": data})
    assert out["files"][0]["upload"]["multipart"] is None  # under the threshold
    put = await s3_client.put(out["files"][0]["upload"]["url"], content=data)
    assert put.status_code == 200, put.text
    assert s3_store.stat(blob_key(sha(data))) is not None
    await s3_client.post(f"{API}/models/{s3_model}/versions/1/finalize")
    url = f"{API}/models/{s3_model}/versions/1/files/w.bin"
    assert (await s3_client.get(url)).content == data
    part = await s3_client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    redirect = await s3_client.get(url, params={"redirect": "true"})
    assert redirect.status_code == 307
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(redirect.headers["location"])).content == data


async def test_proxied_mismatch_stores_nothing(
    s3_client: httpx.AsyncClient, s3_model: str, s3_store: S3ArtifactStore
) -> None:
    good, bad = unique(s3_model, 1000), unique(s3_model, 1000)
    await create_version(s3_client, s3_model, {"w": good})
    r = await s3_client.put(f"{API}/models/{s3_model}/versions/1/files/w", content=bad)
    body = assert_problem(r, 400, "content-mismatch")
    assert body["actual_sha256"] == sha(bad)
    assert list(s3_store.list("")) == []


async def direct_upload(
    client: httpx.AsyncClient, model: str, path: str, data: bytes, *, stop_after: int | None = None
) -> dict[str, Any]:
    url = f"{API}/models/{model}/versions/1/files/{path}/multipart"
    offer: dict[str, Any] = (await client.post(url)).json()
    done = {p["part_number"] for p in offer["completed_parts"]}
    async with httpx.AsyncClient() as s3:
        for part in offer["parts"]:
            n = part["part_number"]
            if n in done or (stop_after is not None and n > stop_after):
                continue
            chunk = data[(n - 1) * offer["part_size"] : n * offer["part_size"]]
            assert (await s3.put(part["url"], content=chunk)).status_code == 200
    return offer


async def test_direct_multipart_upload_resumes_and_verifies(
    s3_client: httpx.AsyncClient, s3_model: str, s3_store: S3ArtifactStore
) -> None:
    data = unique(s3_model, 2 * PART + 123)
    out = await create_version(s3_client, s3_model, {"big.bin": data})
    offer = out["files"][0]["upload"]["multipart"]
    assert offer["parts"] == 3 and offer["part_size"] == PART
    first = await direct_upload(s3_client, s3_model, "big.bin", data, stop_after=1)
    complete = f"{API}/models/{s3_model}/versions/1/files/big.bin/multipart/complete"
    assert_problem(await s3_client.post(complete), 409, "parts-missing")
    second = await direct_upload(s3_client, s3_model, "big.bin", data)  # resumes
    assert second["upload_id"] == first["upload_id"]
    assert [p["part_number"] for p in second["completed_parts"]] == [1]
    done = await s3_client.post(complete)
    assert done.status_code == 200, done.text
    assert done.json()["present"] is True
    assert s3_store.stat(blob_key(sha(data))) is not None
    assert [o.key for o in s3_store.list("tmp/")] == []
    ready = await s3_client.post(f"{API}/models/{s3_model}/versions/1/finalize")
    assert ready.json()["status"] == "ready"
    got = await s3_client.get(f"{API}/models/{s3_model}/versions/1/files/big.bin")
    assert got.content == data


async def test_direct_upload_with_wrong_bytes_is_400(
    s3_client: httpx.AsyncClient, s3_model: str, s3_store: S3ArtifactStore
) -> None:
    data, wrong = unique(s3_model, PART + 10), unique(s3_model, PART + 10)
    await create_version(s3_client, s3_model, {"big.bin": data})
    await direct_upload(s3_client, s3_model, "big.bin", wrong)
    complete = f"{API}/models/{s3_model}/versions/1/files/big.bin/multipart/complete"
    body = assert_problem(await s3_client.post(complete), 400, "content-mismatch")
    assert body["expected_sha256"] == sha(data) and body["actual_sha256"] == sha(wrong)
    assert list(s3_store.list("")) == []
    assert_problem(await s3_client.post(complete), 409, "no-upload-in-progress")
    finalize = await s3_client.post(f"{API}/models/{s3_model}/versions/1/finalize")
    assert_problem(finalize, 409, "files-missing")


async def test_one_shot_upload_on_s3(s3_client: httpx.AsyncClient, s3_model: str) -> None:
    data = unique(s3_model, 2 * 2**20)
    r = await s3_client.post(
        f"{API}/models/{s3_model}/versions:upload",
        files=[("file", ("m.onnx", data))],
        data={"format": "onnx"},
    )
    assert r.status_code == 201, r.text
    got = await s3_client.get(f"{API}/models/{s3_model}/versions/latest/files/m.onnx")
    assert got.content == data


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_store_down_is_503(settings: Settings, sessions: SessionFactory) -> None:
    from devstack.seaweed import free_ports
    from storage import make_s3_client

    port = free_ports(1)[0]
    client = make_s3_client(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        access_key_id="x",
        secret_access_key="y",
    )
    store = S3ArtifactStore(client, "nowhere")
    async with client_for(settings, sessions, store) as c:
        ready = await c.get("/readyz")
        assert_problem(ready, 503, "artifact-store-unavailable")
        assert ready.headers["retry-after"]
        name = f"down-{os.urandom(4).hex()}"
        await c.post(f"{API}/models", json={"name": name})
        await create_version(c, name, {"w": b"x" * 10})
        put = await c.put(f"{API}/models/{name}/versions/1/files/w", content=b"x" * 10)
        assert_problem(put, 503, "artifact-store-unavailable")


async def test_deleting_a_version_aborts_its_direct_uploads(
    s3_client: httpx.AsyncClient, s3_model: str, s3_store: S3ArtifactStore
) -> None:
    data = unique(s3_model, PART + 1)
    await create_version(s3_client, s3_model, {"big.bin": data})
    await direct_upload(s3_client, s3_model, "big.bin", data, stop_after=1)
    listed = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)
    assert len(listed.get("Uploads", [])) == 1
    assert (await s3_client.delete(f"{API}/models/{s3_model}/versions/1")).status_code == 204
    listed = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)
    assert listed.get("Uploads", []) == []
