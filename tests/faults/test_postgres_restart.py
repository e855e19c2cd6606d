"""Scenario 3: Postgres restarted under read and write traffic. A private server (never the
shared one) is stopped as by a crash and started again under a running control plane: calls
answer 503 problems with ``Retry-After`` while it is away (never a 500, never a hang), the
control plane recovers without a restart, and every write acknowledged before, during or
after the outage is there."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from bench.cluster import API, cp_env, start_cp
from bench.harness import ControlPlane, wait_for
from tests.support.private_pg import PrivatePostgres, unavailable

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if (why := unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with PrivatePostgres() as server:
        yield server


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class Traffic(threading.Thread):
    """One writer (model creations) or reader (model reads) in a loop, keeping score."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.url, self.kind = url, kind
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.acknowledged: list[str] = []
        self.slowest = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=20) as http:
            n = 0
            while not self._halt.is_set():
                n += 1
                started = time.monotonic()
                try:
                    self._one(http, n)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)
                time.sleep(0.02)

    def _one(self, http: httpx.Client, n: int) -> None:
        if self.kind == "write":
            name = f"w-{n}"
            answer = http.post(f"{API}/models", json={"name": name})
            if answer.status_code == 201:
                self.acknowledged.append(name)
        else:
            answer = http.get(f"{API}/models", params={"limit": 5})
        self.statuses[answer.status_code] += 1
        if answer.status_code == 503:
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["type"] == "/problems/database-unavailable"
            assert int(answer.headers["retry-after"]) > 0

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def test_postgres_restart_under_traffic(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    asyncio.run(_create_database(private_pg.admin_dsn, "modelplane"))
    env = cp_env(private_pg.url("modelplane"), str(tmp_path / "artifacts"), db_pool_size="4")
    cp: ControlPlane = start_cp(tmp_path, env)
    traffic = [Traffic(cp.url, "write"), Traffic(cp.url, "read"), Traffic(cp.url, "read")]
    try:
        for t in traffic:
            t.start()
        time.sleep(2)
        private_pg.stop()
        down = time.monotonic()

        def unavailable_now() -> bool:
            return httpx.get(f"{cp.url}/readyz", timeout=10).status_code == 503

        wait_for("readyz 503 with the database down", unavailable_now, 20, cp.log)
        time.sleep(3)
        during = Counter(s for t in traffic for s in t.statuses.elements())
        private_pg.start()
        restarted = time.monotonic()

        def writes_again() -> bool:
            answer = httpx.post(f"{cp.api}/models", json={"name": f"probe-{time.monotonic_ns()}"})
            return answer.status_code == 201

        wait_for("writes to succeed again", writes_again, 60, cp.log)
        recovered = time.monotonic() - restarted
        time.sleep(2)
    finally:
        for t in traffic:
            t.stop()
    assert cp.process.poll() is None, "the control plane must not need a restart"
    statuses = Counter(s for t in traffic for s in t.statuses.elements())
    print(f"\npostgres down then up: answers {dict(statuses)}, transport errors "
          f"{sum(len(t.errors) for t in traffic)}, writes back {recovered:.1f}s after the "
          f"restart (down {restarted - down:.1f}s), "
          f"slowest call {max(t.slowest for t in traffic):.1f}s")  # fmt: skip
    assert set(statuses) <= {200, 201, 503}, statuses
    assert during[503] > 0, during
    assert all(t.statuses[200] + t.statuses[201] > 0 for t in traffic)
    assert all(t.errors == [] for t in traffic), [t.errors[:3] for t in traffic]
    http = httpx.Client(base_url=cp.url, timeout=20)
    writer = traffic[0]
    assert writer.acknowledged
    for name in writer.acknowledged:
        assert http.get(f"{API}/models/{name}").status_code == 200, name
    assert httpx.get(f"{cp.url}/readyz").status_code == 200
    cp.stop()
