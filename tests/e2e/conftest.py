"""The deployments platform for end-to-end tests: a control plane on a throwaway Postgres
database and the session's SeaweedFS, with short leases, and deployer workers (two for the
package's `plane`; a module may start its own with `running_platform`); auth is on (the
default): workers and their serving processes use a minted worker key, the tests an admin key."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from bench.harness import REPO, ControlPlane, Process, Worker
from bench.pg import postgres_unavailable, throwaway_database
from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SeaweedServer

LEASE_TTL_S = 4.0
HEARTBEAT_S = 1.0


_PORTS = {
    "w1": "41000-41499",
    "w2": "41500-41999",
    "w3": "42000-42499",
    "full": "42500-42999",
}


@dataclass
class Platform:
    cp: ControlPlane
    workers: dict[str, Worker]
    log_dir: Path
    bucket: str
    seaweed: SeaweedServer
    # on the PYTHONPATH of every process (a runtime plugin), besides the repository
    extra_path: Path | None = field(default=None, kw_only=True)
    # serving ports per worker name, and slots per worker (FaultPlatform has its own)
    port_ranges: ClassVar[dict[str, str]] = _PORTS
    cpu_slots: ClassVar[int] = 2
    serving_heartbeat_s: ClassVar[float] = HEARTBEAT_S

    @property
    def token(self) -> str | None:
        return self.cp.token

    def logs(self) -> str:
        return "\n".join([self.cp.log(), *(w.log() for w in self.workers.values())])

    def start_worker(self, name: str, cpu_slots: int | None = None) -> Worker:
        worker = PluginWorker(
            self.log_dir,
            self.cp.url,
            name,
            self.cp.worker_token,
            self.extra_path,
            cpu_slots=str(self.cpu_slots if cpu_slots is None else cpu_slots),
            drain_timeout_s="10",
            port_range=self.port_ranges[name],
            serving_heartbeat_s=str(self.serving_heartbeat_s),
            max_restarts="1",  # a crash loop fails after one restart, not after a minute
            metrics_port="0",  # any free port; the worker logs it
        )
        self.workers[name] = worker
        return worker


class _OnPath(Process):
    """Starts its process with ``extra_path`` on the PYTHONPATH (``None``: the repo only)."""

    extra_path: Path | None = None

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        super().__init__(args, log_path, {**env, **python_path(self.extra_path)})


class PluginWorker(Worker, _OnPath):
    """`bench.harness.Worker` whose process (and so its serving processes) imports from
    `extra_path` too: `Worker.__init__`'s call of `Process.__init__` reaches `_OnPath`'s
    first (the MRO puts it between them)."""

    def __init__(
        self,
        log_dir: Path,
        control_plane: str,
        name: str,
        token: str | None,
        extra_path: Path | None,
        **flags: str,
    ) -> None:
        self.extra_path = extra_path
        super().__init__(log_dir, control_plane, name, token, **flags)


def python_path(extra_path: Path | None) -> dict[str, str]:
    """The repository, and ``extra_path`` after it when given."""
    return {"PYTHONPATH": f"{REPO}:{extra_path}" if extra_path else str(REPO)}


@pytest.fixture(scope="package")
def plane(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(seaweed, tmp_path_factory, {"w1": 2, "w2": 2}) as platform:
        yield platform


def require_postgres() -> None:
    """Skip without Postgres; with CI=true (CI has Postgres) its absence is a failure."""
    if (why := postgres_unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@contextlib.contextmanager
def running_platform(
    seaweed: SeaweedServer,
    tmp_path_factory: pytest.TempPathFactory,
    workers: dict[str, int],
    *,
    extra_path: Path | None = None,
    label: str = "e2e",
) -> Iterator[Platform]:
    """A control plane and the ``workers`` (name → CPU slots), stopped by PID afterwards;
    ``extra_path`` goes on every process's PYTHONPATH (a runtime plugin), ``label`` names
    the log folder, the bucket and the database."""
    require_postgres()
    log_dir = tmp_path_factory.mktemp(label)
    bucket = f"{label}-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    with throwaway_database(f"mp_{label}") as database_url:
        cp = ControlPlane(
            log_dir,
            {
                **python_path(extra_path),
                "MODELPLANE_DATABASE_URL": database_url,
                "MODELPLANE_STORAGE_URL": f"s3://{bucket}/mp",
                "MODELPLANE_S3_ENDPOINT_URL": seaweed.endpoint_url,
                "MODELPLANE_S3_REGION": REGION,
                "MODELPLANE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "MODELPLANE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "MODELPLANE_LEASE_TTL_S": str(LEASE_TTL_S),
                "MODELPLANE_HEARTBEAT_S": str(HEARTBEAT_S),
                "MODELPLANE_ROUTE_FEED_POLL_S": "0.2",
            },
        )
        platform = Platform(cp, {}, log_dir, bucket, seaweed, extra_path=extra_path)
        try:
            cp.wait_ready().mint_keys()
            for name, cpu_slots in workers.items():
                platform.start_worker(name, cpu_slots)
            yield platform
        finally:
            for worker in platform.workers.values():
                worker.stop()
            cp.stop()
