"""A Modelplane platform for the language-model benchmarks, as users run it: a control plane
(`python -m cli server --migrate`, authentication on: an admin key for the bench, a worker
key for the worker) and one deployer worker, real processes on loopback stopped by PID.
Models are pushed with the SDK (`format hf_causal_lm`), deployed with `POST /deployments`,
called through the stable URL `/serve/{deployment}/v1` with the admin key.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import ControlPlane, Worker, auth, free_port, wait_for
from client.sdk import Client


@dataclass
class LlmPlatform:
    cp: ControlPlane
    worker: Worker
    log_dir: Path
    starts: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.cp.token)

    def logs(self) -> str:
        return self.cp.log() + "\n" + self.worker.log()

    def push(self, model: str, directory: Path) -> int:
        with Client(self.cp.url, self.cp.token) as sdk:
            return int(sdk.push(model, directory, format="hf_causal_lm").version)

    def stable(self, deployment: str) -> str:
        return f"{self.cp.url}/serve/{deployment}/v1"

    def deploy(self, name: str, model: str, version: int, max_batch_size: int = 16) -> float:
        """`POST /deployments`; returns the wall-clock time just before the call."""
        body = {
            "name": name,
            "model": model,
            "version": version,
            "device": "cpu",
            "batching": {"max_batch_size": max_batch_size},
        }
        posted = time.time()
        answer = httpx.post(f"{self.cp.api}/deployments", json=body, headers=self.headers)
        assert answer.status_code == 201, answer.text
        return posted

    def wait_serving(self, name: str, timeout: float = 600) -> None:
        url = self.stable(name) + "/models"
        wait_for(
            f"{name} serving",
            lambda: httpx.get(url, headers=self.headers, timeout=5).status_code == 200,
            timeout,
            self.logs,
        )

    def phases(self, name: str, since: float) -> dict[str, float]:
        """Seconds after `since` (wall clock) of the replica's claim and state changes."""
        answer = httpx.get(
            f"{self.cp.api}/events",
            params={"deployment": name, "limit": 1000},
            headers=self.headers,
        )
        out: dict[str, float] = {}
        for event in answer.json()["items"]:
            at = datetime.fromisoformat(event["time"]).timestamp() - since
            if event["action"] == "replica.claimed":
                out.setdefault("claimed", at)
            elif event["action"] == "replica.state_changed":
                out.setdefault(event["after"]["state"], at)
        return out

    def delete(self, name: str) -> None:
        """Deletes the deployment and waits until its serving process has exited."""
        stops = self._stops()
        answer = httpx.delete(f"{self.cp.api}/deployments/{name}", headers=self.headers)
        assert answer.status_code in (200, 202, 204), answer.text
        wait_for(f"{name}'s process stopped", lambda: self._stops() > stops, 120, self.logs)

    def fresh_worker(self, settle_s: float) -> None:
        """Replaces the worker by a new one with an empty cache, then waits `settle_s` (its
        warm spare imports torch meanwhile, as on a worker idle for a while)."""
        self.worker.stop(60)
        shutil.rmtree(self.worker.cache_dir, ignore_errors=True)
        self.starts += 1
        self.worker = start_worker(self.cp, self.log_dir, f"llm{self.starts}")
        time.sleep(settle_s)

    def _stops(self) -> int:
        return self.worker.log_path.read_text(errors="replace").count(": stopped (")


@contextlib.contextmanager
def llm_platform(log_dir: Path, settings: dict[str, str]) -> Iterator[LlmPlatform]:
    """A control plane with `settings` (MODELPLANE_DATABASE_URL among them) and one worker
    with one CPU slot and its cache under `log_dir`."""
    cp = ControlPlane(log_dir, settings)
    platform: LlmPlatform | None = None
    try:
        cp.wait_ready().mint_keys()
        platform = LlmPlatform(cp, start_worker(cp, log_dir, "llm"), log_dir)
        yield platform
    finally:
        if platform is not None:
            platform.worker.stop(60)
        cp.stop()


def start_worker(cp: ControlPlane, log_dir: Path, name: str) -> Worker:
    port = free_port() // 2 * 2
    return Worker(
        log_dir, cp.url, name, cp.worker_token, cpu_slots="1", port_range=f"{port}-{port + 100}"
    )


def folder_settings(home: Path) -> dict[str, Any]:
    """SQLite and the local folder store under `home` (what `modelplane up` uses)."""
    return {
        "MODELPLANE_HOME": str(home),
        "MODELPLANE_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'registry.db'}",
    }
