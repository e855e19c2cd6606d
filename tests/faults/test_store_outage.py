"""Scenario 2: the object store fails mid-upload. A real control plane streams a proxied
upload to S3 when (a) moto, behind the fault injector, fails every part from the second on,
and (b) a private SeaweedFS process is killed mid-stream. The client gets a 503 problem with
``Retry-After``; the version does not become ready; nothing lands under a final blob key;
the same upload succeeds once the store is back."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import API, cp_env, manifest, s3_env, sha, start_cp
from bench.harness import ControlPlane
from devstack.seaweed import SeaweedServer
from tests.support.s3faults import Fault, FaultyS3Server, S3Request, nth

pytestmark = pytest.mark.timeout(180)
MiB = 2**20
PART = 5 * MiB
SIZE = 4 * PART + 123  # proxied (under the multipart threshold), written to S3 in 5 parts


def _cp(tmp_path: Path, endpoint: str, bucket: str, keys: dict[str, str]) -> ControlPlane:
    env = cp_env(
        f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        f"s3://{bucket}/mp",
        multipart_part_size=str(PART),
        **{**s3_env(endpoint), **keys},
    )
    return start_cp(tmp_path, env)


def _pending_version(http: httpx.Client, model: str, data: bytes) -> str:
    assert http.post(f"{API}/models", json={"name": model}).status_code == 201
    files = {"weights.bin": data}
    created = http.post(f"{API}/models/{model}/versions", json={"files": manifest(files)})
    assert created.status_code == 201, created.text
    url: str = created.json()["files"][0]["upload"]["url"]
    return url


def _assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == "/problems/artifact-store-unavailable"
    assert int(answer.headers["retry-after"]) > 0


def _assert_not_ready(http: httpx.Client, model: str) -> None:
    finalize = http.post(f"{API}/models/{model}/versions/1/finalize")
    assert finalize.status_code == 409, finalize.text
    version = http.get(f"{API}/models/{model}/versions/1").json()
    assert version["status"] == "pending" and version["files"][0]["present"] is False


def _final_keys(client: Any, bucket: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix="mp/blobs/")
    return [o["Key"] for o in listed.get("Contents", [])]


def _resume(http: httpx.Client, model: str, url: str, data: bytes) -> None:
    again = http.put(url, content=data)
    assert again.status_code == 200, again.text
    done = http.post(f"{API}/models/{model}/versions/1/finalize")
    assert done.status_code == 200 and done.json()["status"] == "ready", done.text
    back = http.get(f"{API}/models/{model}/versions/1/files/weights.bin")
    assert sha(back.content) == sha(data)


@pytest.fixture
def moto() -> Iterator[FaultyS3Server]:
    with FaultyS3Server() as server:
        yield server


def test_moto_failing_parts_mid_upload(moto: FaultyS3Server, tmp_path: Path) -> None:
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    moto.client().create_bucket(Bucket=bucket)
    keys = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing"}
    cp = _cp(tmp_path, moto.endpoint_url, bucket, keys)
    try:
        http = httpx.Client(base_url=cp.url, timeout=60)
        data = os.urandom(SIZE)
        url = _pending_version(http, "moto-outage", data)

        def is_part(request: S3Request) -> bool:
            return request.is_upload_part

        moto.fail(nth(is_part, 2, Fault(status=503, code="ServiceUnavailable")))
        _assert_unavailable(http.put(url, content=data))
        moto.fail(nth(is_part, 1, Fault(drop=True)))
        _assert_unavailable(http.put(url, content=data))
        moto.fail(None)

        _assert_not_ready(http, "moto-outage")
        assert _final_keys(moto.client(), bucket) == []
        assert moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        _resume(http, "moto-outage", url, data)
        assert _final_keys(moto.client(), bucket) == [f"mp/blobs/sha256/{sha(data)}"]
    finally:
        cp.stop()


def test_seaweedfs_killed_mid_stream(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path / "weed") as weed:
        bucket = f"outage-{uuid.uuid4().hex[:8]}"
        weed.client().create_bucket(Bucket=bucket)
        cp = _cp(tmp_path, weed.endpoint_url, bucket, {})
        try:
            http = httpx.Client(base_url=cp.url, timeout=90)
            data = os.urandom(SIZE)
            url = _pending_version(http, "weed-outage", data)
            killed = threading.Event()

            def body() -> Iterator[bytes]:
                for offset in range(0, len(data), MiB):
                    if offset == 2 * PART + MiB:  # two parts stored, the third on its way
                        weed.kill()
                        killed.set()
                    yield data[offset : offset + MiB]

            _assert_unavailable(http.put(url, content=body()))
            assert killed.is_set()
            _assert_not_ready(http, "weed-outage")  # the database alone answers this

            weed.restart()
            assert _final_keys(weed.client(), bucket) == []
            _resume(http, "weed-outage", url, data)
            assert _final_keys(weed.client(), bucket) == [f"mp/blobs/sha256/{sha(data)}"]
        finally:
            cp.stop()
