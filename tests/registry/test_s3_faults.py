"""S3 failing mid-upload (moto behind a fault injector): 503, and nothing half-stored."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from registry.db import SessionFactory
from registry.settings import Settings
from storage import S3ArtifactStore, blob_key
from tests.registry.conftest import client_for
from tests.registry.helpers import API, assert_problem, create_version, sha
from tests.support.s3faults import Fault, FaultyS3Server, S3Request, nth

PART = 5 * 2**20


@pytest.fixture(scope="module")
def faulty_s3() -> Iterator[FaultyS3Server]:
    with FaultyS3Server() as server:
        yield server


def _store(server: FaultyS3Server) -> S3ArtifactStore:
    bucket = f"faults-{os.urandom(4).hex()}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    return S3ArtifactStore(client, bucket, "mp", part_size=PART)


def _writes(request: S3Request) -> bool:
    return request.is_upload_part or request.is_put_object


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("failing", [1, 2], ids=["first-part", "second-part"])
async def test_part_failing_mid_stream_is_503_and_stores_nothing(
    settings: Settings, sessions: SessionFactory, faulty_s3: FaultyS3Server, failing: int
) -> None:
    store = _store(faulty_s3)
    data = os.urandom(2 * PART + 100)
    async with client_for(
        settings.model_copy(update={"max_upload_bytes": 64 * 2**20}), sessions, store
    ) as client:
        await client.post(f"{API}/models", json={"name": "faulty"})
        await create_version(client, "faulty", {"w": data})
        faulty_s3.fail(nth(_writes, failing, Fault(status=500)))
        try:
            put = await client.put(f"{API}/models/faulty/versions/1/files/w", content=data)
        finally:
            faulty_s3.fail(None)
        assert_problem(put, 503, "artifact-store-unavailable")
        assert store.stat(blob_key(sha(data))) is None
        version = (await client.get(f"{API}/models/faulty/versions/1")).json()
        assert version["files"][0]["present"] is False
        retry = await client.put(f"{API}/models/faulty/versions/1/files/w", content=data)
        assert retry.status_code == 200, retry.text
        assert store.stat(blob_key(sha(data))) is not None
