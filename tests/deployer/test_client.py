"""The control-plane client: retries while it is away, gives up when told, re-registers."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.harness import free_port
from deployer.cache import BlobCache, DigestMismatch
from deployer.client import PIECE, RANGED_AFTER, ControlPlane, ControlPlaneError, WorkerLapsed
from deployer.contract import FileRef, ReplicaReport, WorkerRegistration


def test_unreachable_control_plane_is_retried_with_backoff_then_raises() -> None:
    client = ControlPlane(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        client.heartbeat("w", [])
    assert 0.3 <= time.monotonic() - started < 5  # waited 0.1 + 0.2 between three tries


def test_a_stopping_worker_does_not_wait_between_retries() -> None:
    stop = threading.Event()
    stop.set()
    client = ControlPlane(f"http://127.0.0.1:{free_port()}", backoff_s=10, stop=stop)
    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        client.heartbeat("w", [])
    assert time.monotonic() - started < 2


def test_without_a_worker_key_the_control_plane_refuses(embedded: str) -> None:
    body = WorkerRegistration(name="t", host="h", address="127.0.0.1", gpus=[], cpu_slots=1)
    with pytest.raises(ControlPlaneError, match="401"):
        ControlPlane(embedded, retries=0).register(body)


def test_register_heartbeat_and_lapse(embedded: str, worker_token: str) -> None:
    client = ControlPlane(embedded, token=worker_token)
    body = WorkerRegistration(name="t", host="h", address="127.0.0.1", gpus=[], cpu_slots=1)
    lease = client.register(body)
    assert lease.heartbeat_s > 0 and lease.lease_ttl_s > 0
    report = ReplicaReport(replica_id="nobody", state="ready")
    assert client.heartbeat(lease.id, [report]) == []
    with pytest.raises(WorkerLapsed):
        client.heartbeat("no-such-worker", [])


def test_a_large_file_comes_in_parallel_ranges_in_order(
    embedded: str, admin_token: str, worker_token: str, tmp_path: Path
) -> None:
    """Past RANGED_AFTER a file is fetched as PARALLEL ranged GETs (here through the control
    plane: a filesystem store offers no presigned URL) and written by several threads, yet
    the cache sees the bytes in order and verifies them whole."""
    data = os.urandom(RANGED_AFTER + 3 * PIECE + 12345)  # pieces, the last one short
    sha = hashlib.sha256(data).hexdigest()
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=f"{embedded}/api/v1", headers=admin, timeout=60) as http:
        assert http.post("/models", json={"name": "ranged"}).status_code == 201
        manifest = {"files": [{"path": "w.bin", "size": len(data), "sha256": sha}]}
        assert http.post("/models/ranged/versions", json=manifest).status_code == 201
        put = http.put("/models/ranged/versions/1/files/w.bin", content=data)
        assert put.status_code == 200, put.text
        assert http.post("/models/ranged/versions/1/finalize").status_code == 200
    ref = FileRef(
        path="w.bin", size=len(data), sha256=sha, url="/api/v1/models/ranged/versions/1/files/w.bin"
    )
    client = ControlPlane(embedded, token=worker_token)
    assert b"".join(client.download(ref)) == data
    path, fresh = BlobCache(tmp_path, 1 << 30).ensure(ref, client.download)
    assert fresh and path.read_bytes() == data
    wrong = ref.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(DigestMismatch):
        BlobCache(tmp_path / "other", 1 << 30).ensure(wrong, client.download)
