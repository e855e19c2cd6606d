"""The executor against a real embedded control plane and real serving processes.

No deployments API is involved: assignments are written by hand, so pulling, verifying,
starting, probing, restarting after kill -9 and draining are tested on their own.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.harness import (
    SIGNATURE,
    push_version,
    torchscript_bytes,
)
from deployer.client import ControlPlane
from deployer.contract import Assignment, FileRef
from deployer.executor import Executor
from deployer.plan import Pull, Restart, Start, Stop, plan
from deployer.settings import WorkerSettings


@pytest.fixture
def executor(embedded: str, worker_token: str, tmp_path: Path) -> Iterator[Executor]:
    settings = WorkerSettings(
        control_plane=embedded, cache_dir=tmp_path / "cache", drain_timeout_s=10, cpu_slots=1
    )
    executor = Executor(settings, ControlPlane(embedded, token=worker_token))
    try:
        yield executor
    finally:
        executor.shutdown(10)


def assignment(embedded: str, rid: str, model: str, data: bytes, version: int = 1) -> Assignment:
    url = f"/api/v1/models/{model}/versions/{version}/files/model.pt"
    ref = FileRef(path="model.pt", size=len(data), sha256=hashlib.sha256(data).hexdigest(), url=url)
    return Assignment.model_validate(
        {
            "replica_id": rid,
            "deployment": model,
            "revision": 1,
            "desired": "run",
            "model": model,
            "version": version,
            "format": "torchscript",
            "files": [ref.model_dump()],
            "signature": SIGNATURE,
            "device": "auto",
            "gpu_ids": [],
            "batching": {},
            "allow_pickle": False,
        }
    )


def drive(executor: Executor, until: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.observe(time.monotonic())
        if until():
            return
        time.sleep(0.1)
    logs = "\n".join(p.read_text()[-3000:] for p in executor.logs.glob("*.log"))
    raise AssertionError(f"timed out; reports {executor.reports(time.monotonic())}\n{logs}")


def report(executor: Executor, rid: str) -> tuple[str, str | None]:
    [found] = [r for r in executor.reports(time.monotonic()) if r.replica_id == rid]
    return found.state, found.reason


def infer(executor: Executor, rid: str, model: str) -> list[float]:
    port = executor.replicas[rid].port
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"http://127.0.0.1:{port}/v2/models/{model}/infer", json=body)
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def test_pull_start_kill9_restart_and_drain(
    executor: Executor, embedded: str, admin_token: str, tmp_path: Path
) -> None:
    data = torchscript_bytes(1.0, tmp_path / "m.pt")
    push_version(embedded, "plus1", {"model.pt": data}, "torchscript", admin_token)
    a = assignment(embedded, "r1", "plus1", data)
    executor.apply(Pull(a), time.monotonic())
    assert report(executor, "r1")[0] == "pulling"
    drive(executor, lambda: executor.replicas["r1"].state.pulled)
    assert executor.cache.blob(a.files[0].sha256).read_bytes() == data
    assert plan([a], executor.states(), time.monotonic()) == [Start(a)]
    executor.apply(Start(a), time.monotonic())
    drive(executor, lambda: report(executor, "r1")[0] == "ready")
    assert infer(executor, "r1", "plus1") == [2, 3, 4, 5]

    os.kill(executor.replicas["r1"].state.pid or 0, signal.SIGKILL)
    drive(executor, lambda: not executor.replicas["r1"].state.running)
    state, reason = report(executor, "r1")
    assert state == "unhealthy" and reason and reason.startswith("killed by SIGKILL")
    crashed_at = executor.replicas["r1"].state.exited_at or 0
    assert plan([a], executor.states(), crashed_at + 0.5) == []  # 1 s backoff
    assert plan([a], executor.states(), crashed_at + 1.0) == [Restart(a, attempt=1)]
    executor.apply(Restart(a, attempt=1), time.monotonic())
    drive(executor, lambda: report(executor, "r1")[0] == "ready")
    assert infer(executor, "r1", "plus1") == [2, 3, 4, 5]
    assert executor.reports(time.monotonic())[0].restarts == 1

    executor.apply(Stop("r1"), time.monotonic())
    assert report(executor, "r1")[0] == "draining"
    drive(executor, lambda: not executor.replicas["r1"].state.running, timeout=20)


def test_cache_hit_pulls_nothing(
    executor: Executor, embedded: str, admin_token: str, tmp_path: Path
) -> None:
    data = torchscript_bytes(3.0, tmp_path / "m.pt")
    push_version(embedded, "plus3", {"model.pt": data}, "torchscript", admin_token)
    first, second = (assignment(embedded, rid, "plus3", data) for rid in ("c1", "c2"))
    executor.apply(Pull(first), time.monotonic())
    drive(executor, lambda: executor.replicas["c1"].state.pulled)
    blob = executor.cache.blob(first.files[0].sha256)
    inode = blob.stat().st_ino
    executor.apply(Pull(second), time.monotonic())
    drive(executor, lambda: executor.replicas["c2"].state.pulled)
    assert blob.stat().st_ino == inode  # not replaced by a second download
    # hashed when pulled and unchanged since: serving is told not to hash it again
    path = executor.replicas["c2"].path
    assert path is not None and executor.serving_spec(second, path, 1).sha256_verified
    with blob.open("r+b") as f:
        f.write(f.read(1))  # same bytes, yet written to: no longer vouched for
    assert not executor.serving_spec(second, path, 1).sha256_verified


def test_bytes_that_do_not_match_fail_the_replica(
    executor: Executor, embedded: str, admin_token: str, tmp_path: Path
) -> None:
    data = torchscript_bytes(2.0, tmp_path / "m.pt")
    push_version(embedded, "plus2", {"model.pt": data}, "torchscript", admin_token)
    claimed = "0" * 64
    good = assignment(embedded, "bad", "plus2", data)
    bad = good.model_copy(update={"files": [good.files[0].model_copy(update={"sha256": claimed})]})
    executor.apply(Pull(bad), time.monotonic())
    drive(executor, lambda: executor.replicas["bad"].state.failed_reason is not None)
    state, reason = report(executor, "bad")
    assert state == "failed" and reason is not None
    assert "sha256 mismatch" in reason and claimed in reason
    assert hashlib.sha256(data).hexdigest() in reason
    assert not executor.cache.blob(claimed).exists()
    assert plan([bad], executor.states(), time.monotonic()) == []
