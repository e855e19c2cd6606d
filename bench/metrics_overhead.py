"""What counting requests costs on the hot read, side by side in one process.

    .venv/bin/python -m bench.metrics_overhead [--requests 20000] [--rounds 5]

Drives the hot-read front (``FastVersionReads``: ``GET /api/v1/models/{name}/versions/
@production``, answered before FastAPI) in-process over a migrated SQLite file, with its
histogram observe on and replaced by a no-op, alternating rounds (ABAB...) so machine
load hits both alike; prints µs per request of each, their ratio, and the cost of one
observe alone. No sockets: the difference is the instrumentation, not the network.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from registry.app import create_app
from registry.fastpath import FastVersionReads
from registry.metrics import ControlPlaneMetrics
from registry.migrate import upgrade_to_head
from registry.settings import Settings


async def seed(app: Any) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://b/api/v1") as c:
        blob = b"weights"
        digest = hashlib.sha256(blob).hexdigest()
        (await c.post("/models", json={"name": "bench"})).raise_for_status()
        files = [{"path": "m.pt", "size": len(blob), "sha256": digest}]
        (await c.post("/models/bench/versions", json={"files": files})).raise_for_status()
        (await c.put("/models/bench/versions/1/files/m.pt", content=blob)).raise_for_status()
        (await c.post("/models/bench/versions/1/finalize")).raise_for_status()
        (await c.put("/models/bench/aliases/production", json={"version": 1})).raise_for_status()


async def drive(front: FastVersionReads, n: int) -> float:
    """µs per request of n sequential hot reads through the ASGI callable."""
    scope = {
        "type": "http", "method": "GET", "path": "/api/v1/models/bench/versions/@production",
        "headers": [], "query_string": b"", "root_path": "",
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(n):
        await front(scope, receive, send)
    took = time.perf_counter() - start
    assert set(statuses) == {200}, set(statuses)
    return took / n * 1e6


async def main(requests: int, rounds: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    settings = Settings(home=home, auth_enabled=False)  # the cost measured is the metrics
    upgrade_to_head(settings.database_url)
    app = create_app(settings)
    await seed(app)
    counted = FastVersionReads(app)
    bare = FastVersionReads(app)
    bare._observe = lambda *args: None  # the same front with the histogram observe removed
    await drive(counted, 500)
    await drive(bare, 500)
    on, off = [], []
    for _ in range(rounds):
        on.append(await drive(counted, requests))
        off.append(await drive(bare, requests))
    metrics = ControlPlaneMetrics()
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        metrics.observe_http("GET", "/r", 200, 0.001)
    each = (time.perf_counter() - start) / n * 1e6
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"hot read, {rounds} rounds x {requests} requests (medians):")
    print(f"  counted    {m_on:8.1f} µs/request   rounds {[round(x, 1) for x in on]}")
    print(f"  uncounted  {m_off:8.1f} µs/request   rounds {[round(x, 1) for x in off]}")
    print(f"  ratio counted/uncounted {m_on / m_off:.3f}")
    print(f"one observe_http alone: {each:.2f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
