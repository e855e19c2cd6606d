"""Shared plumbing for the benchmarks: free ports, throwaway Postgres, real server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get(
    "MODELPLANE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh database for one benchmark run; yields its SQLAlchemy asyncpg URL."""
    name = f"mp_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class ControlPlane:
    """`modelplane server` as a real process on a free loopback port, stopped by PID. With
    authentication on (the default) it gets an admin key: ``headers`` carry it."""

    token: str | None = None

    def __init__(self, env: dict[str, str], *, workers: int = 1, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            **env,
            "MODELPLANE_HOST": "127.0.0.1",
            "MODELPLANE_PORT": str(self.port),
            "MODELPLANE_WORKERS": str(workers),
        }
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "server", "--migrate"],
            env=full_env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(log)
        if full_env.get("MODELPLANE_AUTH_ENABLED", "true").lower() not in ("false", "0", "no"):
            self.token = mint_admin(full_env)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _wait_ready(self, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"control plane not ready in {timeout}s:\n{log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The server process and its workers (children), for RSS readings."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        extra = [int(p) for p in kids.read_text().split()] if kids.exists() else []
        return [self.proc.pid, *extra]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM so the next reading is the peak since now (Linux clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is needed as the load generator: apt-get install -y wrk (or make bench-deps)")
    return path


def mint_admin(env: dict[str, str]) -> str:
    """An admin key straight in the server's database (as `keys create --offline`)."""
    from contract.schemas import KeyCreate, Scope
    from registry.services.keys import mint_key

    url = (
        env.get("MODELPLANE_DATABASE_URL")
        or f"sqlite+aiosqlite:///{env['MODELPLANE_HOME']}/registry.db"
    )
    body = KeyCreate(name="bench", scopes=[Scope.admin])
    return asyncio.run(mint_key(url, body, by="bench")).token
