"""Real platforms for the SDK and CLI tests: `modelplane up` (SQLite, folder store, its own
deployer worker) and a control plane on SeaweedFS S3 with small multipart thresholds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bench.harness import ControlPlane, Process, base_env, free_port, wait_for
from client import Client
from client.config import read_credentials
from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SeaweedServer
from tests.support.recording_proxy import RecordingProxy

PART_SIZE = 5 * 2**20  # S3's smallest part
MULTIPART_THRESHOLD = 8 * 2**20


@dataclass
class Up:
    process: Process
    url: str
    home: Path

    @property
    def token(self) -> str | None:
        """What `up` saved for its clients, if it runs with authentication."""
        return read_credentials(self.home / "credentials.json")[1]

    def client(self, **kwargs: object) -> Client:
        return Client(self.url, self.token, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.process.log()


@pytest.fixture(scope="package")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`python -m cli up` on a free port with a temporary MODELPLANE_HOME."""
    home = tmp_path_factory.mktemp("up-home")
    port = free_port()
    env = {
        **base_env(),
        "MODELPLANE_HOME": str(home),
        "MODELPLANE_WORKER_CPU_SLOTS": "4",  # two tests' deployments, each mid-rollout
        "MODELPLANE_WORKER_DRAIN_TIMEOUT_S": "10",
    }
    args = ["-m", "cli", "up", "--home", str(home), "--port", str(port)]
    process = Process(args, home / "up.log", env)
    platform = Up(process, f"http://127.0.0.1:{port}", home)
    try:

        def ready() -> bool:
            assert process.process.poll() is None, process.log()
            return httpx.get(f"{platform.url}/readyz", timeout=1).status_code == 200

        wait_for("modelplane up", ready, 90, process.log)
        yield platform
    finally:
        process.stop(45)


@dataclass
class S3Plane:
    cp: ControlPlane
    bucket: str
    seaweed: SeaweedServer
    store_proxy: RecordingProxy  # every request the control plane and clients send to S3

    def client(self, **kwargs: object) -> Client:
        return Client(self.cp.url, None, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="package")
def s3_plane(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Plane]:
    """A control plane (SQLite) storing artifacts in SeaweedFS: files from 8 MiB are offered
    direct multipart uploads in 5 MiB parts."""
    log_dir = tmp_path_factory.mktemp("s3-plane")
    bucket = f"client-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    s3 = urlsplit(seaweed.endpoint_url)
    with RecordingProxy(s3.hostname or "127.0.0.1", s3.port or 80) as proxy:
        yield from _s3_plane(log_dir, bucket, seaweed, proxy)


def _s3_plane(
    log_dir: Path, bucket: str, seaweed: SeaweedServer, proxy: RecordingProxy
) -> Iterator[S3Plane]:
    cp = ControlPlane(
        log_dir,
        {
            "MODELPLANE_HOME": str(log_dir),
            "MODELPLANE_AUTH_ENABLED": "false",
            "MODELPLANE_STORAGE_URL": f"s3://{bucket}/mp",
            "MODELPLANE_S3_ENDPOINT_URL": proxy.url,  # presigned part URLs point here too
            "MODELPLANE_S3_REGION": REGION,
            "MODELPLANE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "MODELPLANE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "MODELPLANE_MULTIPART_THRESHOLD": str(MULTIPART_THRESHOLD),
            "MODELPLANE_MULTIPART_PART_SIZE": str(PART_SIZE),
        },
    )
    try:
        cp.wait_ready()
        yield S3Plane(cp, bucket, seaweed, proxy)
    finally:
        cp.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
