"""The SDK (``client.Client``) against a store that fails (moto behind the fault injector,
a real control plane process): a proxied upload the control plane answers 503 for is
retried by the SDK on its own, and a direct multipart push that gave up on one part is
resumed by the next push of the same files, sending only the missing part."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.cluster import cp_env, s3_env, sha, start_cp
from bench.harness import ControlPlane
from client import Client
from client.errors import ServerError
from tests.support.s3faults import Fault, FaultyS3Server, S3Request

pytestmark = pytest.mark.timeout(180)
MiB = 2**20
PART = 5 * MiB


@pytest.fixture
def moto() -> Iterator[FaultyS3Server]:
    with FaultyS3Server() as server:
        yield server


@pytest.fixture
def cp(moto: FaultyS3Server, tmp_path: Path) -> Iterator[ControlPlane]:
    bucket = f"sdk-{uuid.uuid4().hex[:8]}"
    moto.client().create_bucket(Bucket=bucket)
    env = cp_env(
        f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        f"s3://{bucket}/mp",
        multipart_part_size=str(PART),
        multipart_threshold=str(12 * MiB),
        **{**s3_env(moto.endpoint_url), "s3_access_key_id": "t", "s3_secret_access_key": "t"},
    )
    plane = start_cp(tmp_path, env)
    yield plane
    plane.stop()


def first_upload_fails() -> Callable[[S3Request], Fault | None]:
    """Every part of the first multipart upload fails (whatever the control plane's own
    retries do); later uploads go through."""
    doomed: list[str] = []

    def rule(request: S3Request) -> Fault | None:
        if not request.is_upload_part:
            return None
        doomed[:] = doomed or request.query["uploadId"]
        return Fault(status=503, code="SlowDown") if request.query["uploadId"] == doomed else None

    return rule


def _creates(moto: FaultyS3Server) -> int:
    return sum(r.method == "POST" and "uploads" in r.query for r in moto.injector.seen)


def test_sdk_retries_an_upload_the_store_refused(
    moto: FaultyS3Server, cp: ControlPlane, tmp_path: Path
) -> None:
    data = os.urandom(2 * PART + 100)  # proxied (under the threshold), 3 parts to S3
    (tmp_path / "w.bin").write_bytes(data)
    # The control plane's own retries all fail: it answers 503, and the SDK tries again.
    moto.fail(first_upload_fails())
    with Client(cp.url) as sdk:
        version = sdk.push("retried", {"w.bin": tmp_path / "w.bin"})
        assert version.status == "ready"
        assert _creates(moto) == 2, "one upload answered 503, the next one stored"
        sdk.pull("retried", version.version, tmp_path / "back")
    assert sha((tmp_path / "back" / "w.bin").read_bytes()) == sha(data)


def test_sdk_resumes_a_multipart_push_that_gave_up(
    moto: FaultyS3Server, cp: ControlPlane, tmp_path: Path
) -> None:
    data = os.urandom(4 * PART - 1000)  # direct multipart: 4 parts straight to the store
    (tmp_path / "big.bin").write_bytes(data)

    def third_part(request: S3Request) -> Fault | None:
        return Fault(status=500) if request.is_upload_part and request.query.get(
            "partNumber") == ["3"] else None  # fmt: skip

    moto.fail(third_part)
    with Client(cp.url, retries=2) as sdk:
        with pytest.raises(ServerError):
            sdk.push("resumed", {"big.bin": tmp_path / "big.bin"})
        moto.fail(None)  # the store is back; `seen` starts afresh
        version = sdk.push("resumed", {"big.bin": tmp_path / "big.bin"})
        assert version.status == "ready" and version.version == 1  # the pending one, resumed
        parts = [r.query["partNumber"] for r in moto.injector.seen if r.is_upload_part]
        assert parts == [["3"]], parts
        sdk.pull("resumed", version.version, tmp_path / "back")
    assert sha((tmp_path / "back" / "big.bin").read_bytes()) == sha(data)
