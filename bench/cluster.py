"""Processes and calls shared by the fault scenarios (tests/faults/) and bench/soak.py."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from bench.harness import ControlPlane
from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

API = "/api/v1"


def cp_env(database_url: str, storage_url: str, **extra: str) -> dict[str, str]:
    """MODELPLANE_* settings of a test control plane: auth off (these tests are not about
    it), a small pool (the shared Postgres has 100 connections for every helper's tests)."""
    env = {
        "MODELPLANE_DATABASE_URL": database_url,
        "MODELPLANE_STORAGE_URL": storage_url,
        "MODELPLANE_AUTH_ENABLED": "false",
        "MODELPLANE_DB_POOL_SIZE": "8",
    }
    env.update({f"MODELPLANE_{k.upper()}": v for k, v in extra.items()})
    return env


def s3_env(endpoint_url: str) -> dict[str, str]:
    return {
        "s3_endpoint_url": endpoint_url,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY_ID,
        "s3_secret_access_key": SECRET_ACCESS_KEY,
    }


def start_cp(log_dir: Path, env: dict[str, str], name: str = "cp") -> ControlPlane:
    """A control plane (``python -m cli server --migrate``), its log in ``log_dir/name``."""
    (log_dir / name).mkdir(parents=True, exist_ok=True)
    return ControlPlane(log_dir / name, env).wait_ready()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]


def events(http: httpx.Client, model: str, action: str) -> list[dict[str, Any]]:
    """Every event of ``action`` on ``model``, oldest first."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"model": model, "action": action, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"{API}/events", params=params).json()
        out += page["items"]
        if not (cursor := page["next_cursor"]):
            return out


def alias_history(http: httpx.Client, model: str, alias: str) -> list[dict[str, Any]]:
    """Every move of the alias, oldest first."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"{API}/models/{model}/aliases/{alias}/history", params=params).json()
        out += page["items"]
        if not (cursor := page["next_cursor"]):
            return out[::-1]


class Load(threading.Thread):
    """Calls ``/v2/models/{model}/infer`` at a steady ``rate`` from ``concurrency`` callers
    (aiohttp on its own event loop), recording every call's start, latency and outcome."""

    def __init__(self, url: str, model: str, *, rate: float = 300, concurrency: int = 8) -> None:
        super().__init__(daemon=True)
        self.url = f"{url}/v2/models/{model}/infer"
        self.rate, self.concurrency = rate, concurrency
        self.calls: list[tuple[float, float]] = []  # (started, seconds) of each success
        self.failures: list[str] = []
        self.seen: Counter[float] = Counter()  # first output value: which version answered
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._caller(session) for _ in range(self.concurrency)))

    async def _caller(self, session: aiohttp.ClientSession) -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
        interval = self.concurrency / self.rate
        due = time.monotonic()
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                async with session.post(self.url, json=body) as answer:
                    text = await answer.text()
                    if answer.status == 200:
                        self.seen[orjson.loads(text)["outputs"][0]["data"][0]] += 1
                        self.calls.append((started, time.monotonic() - started))
                    else:
                        self.failures.append(f"{answer.status}: {text[:200]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(repr(exc))
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def window(self, start: float, end: float) -> tuple[float, float]:
        """(calls/s, p99 ms) of the successful calls started in [start, end)."""
        took = sorted(s for t, s in list(self.calls) if start <= t < end)
        if not took:
            return 0.0, float("nan")
        p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
        return len(took) / max(end - start, 1e-9), p99 * 1000


X = [1.0, 2.0, 3.0, 4.0]
