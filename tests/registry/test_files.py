"""Proxied uploads, downloads and the one-shot upload, on the folder store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from registry.db import SessionFactory
from registry.tables import BlobRow
from storage import FileSystemArtifactStore, blob_key
from storage.filesystem import TEMP_PREFIX
from tests.registry.conftest import MAX_UPLOAD
from tests.registry.helpers import API, assert_problem, create_version, ready_version, sha


def files_url(model: str, version: int, path: str) -> str:
    return f"{API}/models/{model}/versions/{version}/files/{path}"


async def test_upload_then_download_identical_bytes(
    client: httpx.AsyncClient, model: str, fs_artifacts: FileSystemArtifactStore
) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB: several buffers
    data = data[: MAX_UPLOAD - 1]
    out = await create_version(client, model, {"weights/model.bin": data})
    put = await client.put(out["files"][0]["upload"]["url"], content=data)
    assert put.status_code == 200, put.text
    assert put.json() == {
        "path": "weights/model.bin",
        "size": len(data),
        "sha256": sha(data),
        "present": True,
        "upload": None,
    }
    assert fs_artifacts.stat(blob_key(sha(data))) is not None
    got = await client.get(files_url(model, 1, "weights/model.bin"))
    assert got.status_code == 200 and got.content == data
    assert got.headers["etag"] == f'"{sha(data)}"'
    assert got.headers["accept-ranges"] == "bytes"
    assert int(got.headers["content-length"]) == len(data)


async def test_digest_mismatch_is_400_and_stores_nothing(
    client: httpx.AsyncClient, model: str, fs_artifacts: FileSystemArtifactStore
) -> None:
    expected, wrong = f"right {model}".encode(), f"wrong {model}".encode()  # same length
    await create_version(client, model, {"w": expected})
    body = assert_problem(
        await client.put(files_url(model, 1, "w"), content=wrong), 400, "content-mismatch"
    )
    assert body["expected_sha256"] == sha(expected) and body["actual_sha256"] == sha(wrong)
    assert fs_artifacts.stat(blob_key(sha(wrong))) is None
    assert fs_artifacts.stat(blob_key(sha(expected))) is None
    assert not [o for o in fs_artifacts.list("") if model in o.key]
    version = (await client.get(f"{API}/models/{model}/versions/1")).json()
    assert version["files"][0]["present"] is False


async def test_size_mismatch_is_400(client: httpx.AsyncClient, model: str) -> None:
    await create_version(client, model, {"w": b"12345"})
    body = assert_problem(await client.put(files_url(model, 1, "w"), content=b"123"), 400)
    assert body["expected_size"] == 5 and body["actual_size"] == 3


async def test_upload_over_limit_is_413(client: httpx.AsyncClient, model: str) -> None:
    big = b"x" * (MAX_UPLOAD + 1)
    await create_version(client, model, {"big": big})
    assert_problem(
        await client.put(files_url(model, 1, "big"), content=big), 413, "upload-too-large"
    )


async def test_streamed_upload_over_limit_is_413(client: httpx.AsyncClient, model: str) -> None:
    big = b"x" * (MAX_UPLOAD + 1)
    await create_version(client, model, {"big": big})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for i in range(0, len(big), 2**20):
            yield big[i : i + 2**20]

    response = await client.put(files_url(model, 1, "big"), content=chunks())
    assert_problem(response, 413)


async def test_upload_to_ready_version_is_409(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"w": b"w"})
    response = await client.put(files_url(model, n, "w"), content=b"w")
    assert_problem(response, 409, "version-immutable")


async def test_upload_of_unknown_path_is_404(client: httpx.AsyncClient, model: str) -> None:
    await create_version(client, model, {"w": b"w"})
    assert_problem(
        await client.put(files_url(model, 1, "other"), content=b"w"), 404, "file-not-found"
    )
    assert_problem(
        await client.put(files_url(model, 9, "w"), content=b"w"), 404, "version-not-found"
    )


@pytest.mark.parametrize("path", ["a%5Cb", "a%00b", "a//b", "%2E%2E/x", "a/%2E%2E/b"])
async def test_bad_path_in_url_is_400(client: httpx.AsyncClient, model: str, path: str) -> None:
    await create_version(client, model, {"w": b"w"})
    response = await client.put(f"{API}/models/{model}/versions/1/files/{path}", content=b"w")
    assert_problem(response, 400, "invalid-path")


async def test_concurrent_uploads_of_the_same_bytes_store_one_intact_blob(
    client: httpx.AsyncClient,
    model: str,
    fs_artifacts: FileSystemArtifactStore,
    sessions: SessionFactory,
) -> None:
    # Unique bytes (Postgres tests share one store), several buffers long so the four
    # uploads interleave.
    data = model.encode() + os.urandom(3 * 2**20)
    digest = sha(data)
    blob_dir = fs_artifacts.root / Path(blob_key(digest)).parent
    temps_before = set(blob_dir.glob(f"{TEMP_PREFIX}*"))
    for _ in range(4):
        await create_version(client, model, {"w": data})
    responses = await asyncio.gather(
        *(client.put(files_url(model, n, "w"), content=data) for n in range(1, 5))
    )
    assert [r.status_code for r in responses] == [200] * 4
    for n in range(1, 5):
        assert (await client.post(f"{API}/models/{model}/versions/{n}/finalize")).status_code == 200

    stored = [o.key for o in fs_artifacts.list(blob_key(digest))]
    assert stored == [blob_key(digest)]
    assert set(blob_dir.glob(f"{TEMP_PREFIX}*")) == temps_before  # no half-written copy left
    with fs_artifacts.open(blob_key(digest)) as stream:
        assert stream.read() == data
    async with sessions() as session:
        rows = await session.scalar(
            select(func.count()).select_from(BlobRow).where(BlobRow.sha256 == digest)
        )
    assert rows == 1
    for n in range(1, 5):
        assert (await client.get(files_url(model, n, "w"))).content == data


async def test_ranges_etag_and_304(client: httpx.AsyncClient, model: str) -> None:
    data = bytes(range(100))
    n = await ready_version(client, model, {"d": data})
    url = files_url(model, n, "d")
    cases = {
        "bytes=0-9": data[0:10],
        "bytes=90-": data[90:],
        "bytes=-5": data[95:],
        "bytes=95-200": data[95:],
    }
    for header, expected in cases.items():
        r = await client.get(url, headers={"Range": header})
        assert r.status_code == 206 and r.content == expected, header
        start = 100 - len(expected) if header != "bytes=0-9" else 0
        assert r.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/100"
    for bad in ("bytes=100-", "bytes=50-10"):
        r = await client.get(url, headers={"Range": bad})
        assert_problem(r, 416)
        assert r.headers["content-range"] == "bytes */100"
    r = await client.get(url, headers={"If-None-Match": f'"{sha(data)}"'})
    assert r.status_code == 304 and r.content == b""
    redirect = await client.get(url, params={"redirect": "true"})  # folder store: streams
    assert redirect.status_code == 200 and redirect.content == data


async def test_download_of_missing_bytes_is_404(client: httpx.AsyncClient, model: str) -> None:
    await create_version(client, model, {"w": model.encode()})
    assert_problem(await client.get(files_url(model, 1, "w")), 404, "file-not-uploaded")


async def test_empty_file(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"empty": b""})
    r = await client.get(files_url(model, n, "empty"))
    assert r.status_code == 200 and r.content == b""


async def test_multipart_on_folder_store_is_409(client: httpx.AsyncClient, model: str) -> None:
    await create_version(client, model, {"w": b"w"})
    response = await client.post(files_url(model, 1, "w") + "/multipart")
    assert_problem(response, 409, "direct-upload-unsupported")


async def test_one_shot_upload_makes_a_ready_version(client: httpx.AsyncClient, model: str) -> None:
    files = [("file", ("model.pt", b"torch bytes")), ("file", ("config.json", b"{}"))]
    data = {"format": "torchscript", "description": "first", "alias": "production"}
    response = await client.post(f"{API}/models/{model}/versions:upload", files=files, data=data)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["status"] == "ready" and out["format"] == "torchscript"
    assert {f["path"]: f["sha256"] for f in out["files"]} == {
        "model.pt": sha(b"torch bytes"),
        "config.json": sha(b"{}"),
    }
    alias = (await client.get(f"{API}/models/{model}/aliases/production")).json()
    assert alias["version"] == out["version"]
    got = await client.get(files_url(model, out["version"], "model.pt"))
    assert got.content == b"torch bytes"


async def test_one_shot_bad_input(client: httpx.AsyncClient, model: str) -> None:
    url = f"{API}/models/{model}/versions:upload"
    assert_problem(await client.post(url, json={"file": "x"}), 415, "unsupported-media-type")
    assert_problem(await client.post(url, files=[("other", ("a", b"a"))]), 400)
    assert_problem(await client.post(url, files=[("file", ("../a", b"a"))]), 400, "invalid-path")
    bad_alias = await client.post(url, files=[("file", ("a", b"a"))], data={"alias": "Bad!"})
    assert_problem(bad_alias, 400)
    assert_problem(
        await client.post(f"{API}/models/ghost/versions:upload", files=[("file", ("a", b"a"))]),
        404,
    )
    assert (await client.get(f"{API}/models/{model}/versions")).json()["items"] == []
