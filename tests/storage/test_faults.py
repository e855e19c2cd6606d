"""S3 failures: injected with moto behind a fault middleware, and a store nobody answers."""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from storage import (
    ArtifactNotFound,
    S3ArtifactStore,
    StorageUnavailable,
    make_s3_client,
    open_store,
)
from tests.support.s3faults import Fault, FaultyS3Server, S3Request, nth

MiB = 2**20
PART = 5 * MiB


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[FaultyS3Server]:
    with FaultyS3Server() as server:
        yield server


@pytest.fixture
def faulty(moto_s3: FaultyS3Server, request: pytest.FixtureRequest) -> Iterator[S3ArtifactStore]:
    client = moto_s3.client()
    bucket = f"faults-{abs(hash(request.node.nodeid)) % 10**12}"
    client.create_bucket(Bucket=bucket)
    yield S3ArtifactStore(client, bucket, "mp", part_size=PART)
    moto_s3.fail(None)


def assert_nothing_left(store: S3ArtifactStore, key: str) -> None:
    assert store.stat(key) is None
    assert list(store.list("")) == []
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
    assert uploads.get("Uploads", []) == []


def write_parts(store: S3ArtifactStore, key: str, size: int) -> None:
    writer = store.writer(key)
    block = os.urandom(1 * MiB)
    for _ in range(size // MiB):
        writer.write(block)
    writer.commit()


def is_upload_part(request: S3Request) -> bool:
    return request.is_upload_part


def test_failing_part_upload_aborts_the_writer(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    moto_s3.fail(nth(is_upload_part, 2, Fault(status=500)))
    with pytest.raises(StorageUnavailable) as raised:
        write_parts(faulty, "blobs/a", 4 * PART)
    assert "UploadPart" in str(raised.value) and faulty.bucket in str(raised.value)
    moto_s3.fail(None)
    assert_nothing_left(faulty, "blobs/a")


def test_dropped_connection_during_a_part_aborts_the_writer(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    moto_s3.fail(nth(is_upload_part, 2, Fault(drop=True)))
    with pytest.raises(StorageUnavailable):
        write_parts(faulty, "blobs/b", 3 * PART)
    moto_s3.fail(None)
    assert_nothing_left(faulty, "blobs/b")


def test_a_part_failing_once_is_retried(moto_s3: FaultyS3Server, faulty: S3ArtifactStore) -> None:
    moto_s3.fail(nth(is_upload_part, 1, Fault(status=503, code="SlowDown"), repeat=False))
    write_parts(faulty, "blobs/c", 2 * PART + MiB)
    info = faulty.stat("blobs/c")
    assert info is not None and info.size == 2 * PART + MiB


def test_failing_completion_leaves_nothing(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    moto_s3.fail(lambda request: Fault(status=500) if request.is_complete_multipart else None)
    with pytest.raises(StorageUnavailable):
        write_parts(faulty, "blobs/d", 2 * PART)
    moto_s3.fail(None)
    assert_nothing_left(faulty, "blobs/d")


def test_throttled_single_put_is_unavailable(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    moto_s3.fail(
        lambda request: Fault(status=503, code="SlowDown") if request.is_put_object else None
    )
    with pytest.raises(StorageUnavailable) as raised:
        faulty.put("blobs/e", io.BytesIO(b"small"))
    assert "SlowDown" in str(raised.value)
    moto_s3.fail(None)
    assert_nothing_left(faulty, "blobs/e")


def test_access_denied_is_unavailable_not_missing(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    faulty.put("blobs/f", io.BytesIO(b"x"))
    moto_s3.fail(lambda request: Fault(status=403, code="AccessDenied"))
    with pytest.raises(StorageUnavailable):
        faulty.open("blobs/f")
    with pytest.raises(StorageUnavailable):
        faulty.check()


def test_missing_bucket_is_unavailable(moto_s3: FaultyS3Server) -> None:
    store = S3ArtifactStore(moto_s3.client(), "no-such-bucket-here")
    with pytest.raises(StorageUnavailable) as raised:
        store.check()
    assert "no-such-bucket-here" in str(raised.value) and moto_s3.endpoint_url in str(raised.value)
    with pytest.raises(StorageUnavailable):
        store.put("k", io.BytesIO(b"x"))


def test_a_stream_cut_mid_body_raises_unavailable(
    moto_s3: FaultyS3Server, faulty: S3ArtifactStore
) -> None:
    data = os.urandom(256 * 1024)
    faulty.put("blobs/g", io.BytesIO(data))
    moto_s3.fail(lambda request: Fault(truncate=1000) if request.is_get_object else None)
    stream = faulty.open("blobs/g")
    with pytest.raises(StorageUnavailable):
        while stream.read(64 * 1024):
            pass
    stream.close()


def test_absent_key_on_moto_is_not_found(faulty: S3ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        faulty.open("blobs/none")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unreachable() -> S3ArtifactStore:
    store = open_store(
        "s3://modelplane/prefix",
        s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
        s3_region="us-east-1",
        s3_access_key_id="x",
        s3_secret_access_key="y",
    )
    assert isinstance(store, S3ArtifactStore)
    return store


@pytest.mark.parametrize("operation", ["check", "open", "stat", "list", "writer", "put_parts"])
def test_unreachable_store_is_unavailable_within_seconds(
    unreachable: S3ArtifactStore, operation: str
) -> None:
    calls: dict[str, Any] = {
        "check": unreachable.check,
        "open": lambda: unreachable.open("blobs/x"),
        "stat": lambda: unreachable.stat("blobs/x"),
        "list": lambda: list(unreachable.list("blobs/")),
        "writer": lambda: unreachable.put("blobs/x", io.BytesIO(b"small")),
        "put_parts": lambda: unreachable.put(
            "blobs/x", io.BytesIO(bytes(unreachable.part_size + 1))
        ),
    }
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        calls[operation]()
    assert time.monotonic() - started < 5
    assert "127.0.0.1" in str(raised.value)


def test_make_s3_client_fails_fast_settings() -> None:
    client: Any = make_s3_client(endpoint_url="http://127.0.0.1:1", region="us-east-1")
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 30)
    # botocore reads ``max_attempts`` in a Config as retries: 3 retries, 4 attempts in all.
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert config.s3 == {"addressing_style": "path"}
