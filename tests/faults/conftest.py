"""Fault-injection scenarios: real control-plane, worker, serving, Postgres and SeaweedFS
processes on loopback, each test bounded in time. Helpers in ``bench/cluster.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from bench.cluster import cp_env, s3_env
from bench.harness import ControlPlane
from bench.pg import postgres_unavailable, throwaway_database
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform


def need_postgres() -> None:
    if (why := postgres_unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway database on the shared Postgres (migrated by the control plane)."""
    need_postgres()
    with throwaway_database("mp_faults") as url:
        yield url


LEASE_TTL_S = float(os.environ.get("MODELPLANE_TEST_LEASE_TTL_S", "4"))
HEARTBEAT_S = LEASE_TTL_S / 4
PORTS = {"w1": "43000-43499", "w2": "43500-43999", "w3": "44000-44499"}


@dataclass
class FaultPlatform(Platform):
    """The e2e platform with the faults package's settings: auth off, a small database
    pool, leases of ``MODELPLANE_TEST_LEASE_TTL_S`` (default 4 s), its own port ranges."""

    env: dict[str, str] = field(default_factory=dict)  # another control plane's settings

    port_ranges: ClassVar[dict[str, str]] = PORTS
    cpu_slots: ClassVar[int] = 3
    serving_heartbeat_s: ClassVar[float] = HEARTBEAT_S


@pytest.fixture(scope="package")
def plane(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultPlatform]:
    need_postgres()
    log_dir = tmp_path_factory.mktemp("faults")
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    with throwaway_database("mp_faults") as database_url:
        env = cp_env(
            database_url,
            f"s3://{bucket}/mp",
            lease_ttl_s=str(LEASE_TTL_S),
            heartbeat_s=str(HEARTBEAT_S),
            route_feed_poll_s="0.2",
            **s3_env(seaweed.endpoint_url),
        )
        cp = ControlPlane(log_dir, env)
        platform = FaultPlatform(cp, {}, log_dir, bucket, seaweed, env)
        try:
            cp.wait_ready()
            platform.start_worker("w1")
            platform.start_worker("w2")
            yield platform
        finally:
            for worker in platform.workers.values():
                worker.stop()
            cp.stop()
