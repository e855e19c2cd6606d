"""The control-plane client: retries while it is away, gives up when told, re-registers."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from deployer.client import ControlPlane, ControlPlaneError, WorkerLapsed
from deployer.contract import ReplicaReport, WorkerRegistration
from tests.e2e.platform import free_port


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
