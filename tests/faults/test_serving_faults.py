"""Scenarios 5-8 on a real platform (control plane, two deployer workers, serving
processes): kill -9 of a serving process and of a worker, models that crash on load or on
every Nth call (with automatic rollback), and rollout plus rollback under steady load
through the stable URL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import Load
from bench.harness import (
    SIGNATURE,
    push_version,
    torch_export_bytes,
    torchscript_bytes,
    wait_for,
)
from tests.e2e.deploy_helpers import (
    api,
    deployment,
    ready_endpoints,
    serving_pid,
    wait_serving,
)
from tests.faults.conftest import LEASE_TTL_S, FaultPlatform
from tests.faults.models import CrashEveryN, pickled_bytes

pytestmark = pytest.mark.timeout(240)
RATE = float(os.environ.get("MODELPLANE_TEST_LOAD_RATE", "250"))


def push_two_versions(plane: FaultPlatform, model: str, tmp_path: Path) -> None:
    """v1: TorchScript y = x + 1; v2: torch.export y = x + 2."""
    v1 = torchscript_bytes(1.0, tmp_path / f"{model}-1.pt")
    push_version(
        plane.cp.url, model, {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    v2 = torch_export_bytes(2.0, tmp_path / f"{model}-2.pt2")
    push_version(plane.cp.url, model, {"model.pt2": v2}, "torch_export", plane.token)


def deploy(plane: FaultPlatform, name: str, version: int, **settings: Any) -> None:
    body = {"name": name, "model": name, "version": version, "replicas": 1, **settings}
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text
    wait_serving(plane, name, version, timeout=90)


def undeploy(plane: FaultPlatform, name: str) -> None:
    assert api(plane, "DELETE", f"/deployments/{name}").status_code in (202, 204)
    wait_for(
        f"{name} deleted",
        lambda: api(plane, "GET", f"/deployments/{name}").status_code == 404,
        60,
        plane.logs,
    )


def answers(url: str, model: str) -> float | None:
    """The first output of one call through ``url`` (which version answered), or ``None``."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=10)
    return float(answer.json()["outputs"][0]["data"][0]) if answer.status_code == 200 else None


def events(plane: FaultPlatform, model: str, action: str) -> list[dict[str, Any]]:
    params = {"model": model, "action": action, "limit": 1000}
    items: list[dict[str, Any]] = api(plane, "GET", "/events", params=params).json()["items"]
    return items


def revisions(plane: FaultPlatform, name: str) -> list[tuple[int, int, str]]:
    items = api(plane, "GET", f"/deployments/{name}/revisions").json()["items"]
    return sorted((r["revision"], r["version"], r["reason"]) for r in items)


def test_rollout_and_rollback_under_steady_load(plane: FaultPlatform, tmp_path: Path) -> None:
    push_two_versions(plane, "steady", tmp_path)
    deploy(plane, "steady", 1)
    load = Load(f"{plane.cp.url}/serve/steady", "steady", rate=RATE)
    load.start()
    try:
        t0 = time.monotonic()
        time.sleep(6)
        t1 = time.monotonic()
        assert api(plane, "PATCH", "/deployments/steady", json={"version": 2}).status_code == 200
        wait_serving(plane, "steady", 2, timeout=90)
        wait_for("v1 gone", lambda: not ready_endpoints(plane, "steady", 1), 30, plane.logs)
        t2 = time.monotonic()
        assert api(plane, "POST", "/deployments/steady/rollback", json={}).status_code == 200
        wait_serving(plane, "steady", 1, timeout=90)
        wait_for("v2 gone", lambda: not ready_endpoints(plane, "steady", 2), 30, plane.logs)
        t3 = time.monotonic()
        time.sleep(2)
    finally:
        load.stop()
    phases = {"before": (t0, t1), "rollout": (t1, t2), "rollback": (t2, t3)}
    print(f"\nsteady load through the stable URL (target {RATE:.0f} calls/s, 1 replica):")
    for phase, (start, end) in phases.items():
        rate, p99 = load.window(start, end)
        print(f"  {phase:8s} {end - start:5.1f}s  {rate:6.0f} calls/s  p99 {p99:6.1f} ms")
    assert load.failures == [], (len(load.failures), load.failures[:5])
    assert load.seen[2.0] > 0 and load.seen[3.0] > 0, load.seen
    assert revisions(plane, "steady") == [(1, 1, "create"), (2, 2, "update"), (3, 1, "rollback")]
    undeploy(plane, "steady")


def test_kill9_of_one_of_two_replicas_loses_no_call(plane: FaultPlatform, tmp_path: Path) -> None:
    push_two_versions(plane, "twin", tmp_path)
    deploy(plane, "twin", 1, replicas=2)
    load = Load(f"{plane.cp.url}/serve/twin", "twin", rate=100, concurrency=4)
    load.start()
    try:
        time.sleep(1)
        victim = ready_endpoints(plane, "twin", 1)[0]
        _, pid = serving_pid(plane, victim["url"])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def restarted() -> list[dict[str, Any]]:
            replicas = deployment(plane, "twin")["observed"]["replicas"]
            again = [r for r in replicas if r["restarts"] >= 1 and r["state"] == "ready"]
            return again if again and len(ready_endpoints(plane, "twin", 1)) == 2 else []

        [replica] = wait_for("the killed replica ready again", restarted, 60, plane.logs)
        recovered = time.monotonic() - killed
        time.sleep(1)
    finally:
        load.stop()
    print(f"\nserving kill -9 → replica ready again in {recovered:.1f}s; "
          f"{sum(load.seen.values())} calls, {len(load.failures)} failed")  # fmt: skip
    assert load.failures == [], (len(load.failures), load.failures[:5])
    changes = [
        e["after"]["state"]
        for e in events(plane, "twin", "replica.state_changed")
        if e["after"].get("replica") == replica["id"]
    ]
    after_kill = changes[changes.index("ready") + 1 :]
    assert "unhealthy" in after_kill and after_kill[-1] == "ready", changes
    assert after_kill.index("unhealthy") < len(after_kill) - 1
    undeploy(plane, "twin")


def test_kill9_of_a_worker_time_to_recovery(plane: FaultPlatform, tmp_path: Path) -> None:
    push_two_versions(plane, "orphaned", tmp_path)
    deploy(plane, "orphaned", 1)
    [endpoint] = ready_endpoints(plane, "orphaned", 1)
    owner, _ = serving_pid(plane, endpoint["url"])
    killed = time.monotonic()
    plane.workers[owner].kill9()

    def elsewhere() -> bool:
        moved = [e for e in ready_endpoints(plane, "orphaned", 1) if e["url"] != endpoint["url"]]
        return bool(moved) and answers(f"{plane.cp.url}/serve/orphaned", "orphaned") == 2.0

    try:
        wait_for("orphaned served by the other worker", elsewhere, LEASE_TTL_S + 60, plane.logs)
        took = time.monotonic() - killed
    finally:
        plane.start_worker(owner)  # the next tests find two workers again
    print(f"\nworker kill -9 → serving again on the other worker in {took:.1f}s "
          f"(lease TTL {LEASE_TTL_S:.1f}s)")  # fmt: skip
    undeploy(plane, "orphaned")


def test_a_version_that_cannot_load_is_rolled_back_automatically(
    plane: FaultPlatform, tmp_path: Path
) -> None:
    v1 = torchscript_bytes(1.0, tmp_path / "fallback-1.pt")
    push_version(
        plane.cp.url, "fallback", {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    push_version(
        plane.cp.url, "fallback", {"model.pt": b"not TorchScript"}, "torchscript", plane.token
    )
    deploy(plane, "fallback", 1, auto_rollback=True)
    load = Load(f"{plane.cp.url}/serve/fallback", "fallback", rate=50, concurrency=2)
    load.start()
    try:
        assert api(plane, "PATCH", "/deployments/fallback", json={"version": 2}).status_code == 200
        wait_for("the rollback revision", lambda: deployment(plane, "fallback")["revision"] == 3,
                 90, plane.logs)  # fmt: skip
        wait_serving(plane, "fallback", 1, timeout=60)
    finally:
        load.stop()
    assert load.failures == [] and set(load.seen) == {2.0}, (load.failures[:5], load.seen)
    assert revisions(plane, "fallback") == [
        (1, 1, "create"),
        (2, 2, "update"),
        (3, 1, "rollback"),
    ]
    [failed] = events(plane, "fallback", "deployment.failed")
    reason = failed["after"]["reason"]
    assert "cannot load" in reason or "exited with code 1" in reason, failed
    [rolled] = events(plane, "fallback", "deployment.auto_rolled_back")
    assert rolled["after"] == {"to_revision": 1, "version": 1}
    undeploy(plane, "fallback")


def test_a_model_crashing_every_nth_call_fails_and_is_rolled_back(
    plane: FaultPlatform, tmp_path: Path
) -> None:
    v1 = torchscript_bytes(1.0, tmp_path / "flaky-1.pt")
    push_version(
        plane.cp.url, "flaky", {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    v2 = pickled_bytes(CrashEveryN(25, 2.0), tmp_path / "flaky-2.pt")
    push_version(
        plane.cp.url, "flaky", {"model.pt": v2}, "pickle", plane.token, signature=SIGNATURE
    )
    deploy(plane, "flaky", 1, replicas=2, auto_rollback=True, allow_pickle=True)
    load = Load(f"{plane.cp.url}/serve/flaky", "flaky", rate=40, concurrency=2)
    load.start()
    try:
        assert api(plane, "PATCH", "/deployments/flaky", json={"version": 2}).status_code == 200
        wait_for("the rollback revision", lambda: deployment(plane, "flaky")["revision"] == 3,
                 120, plane.logs)  # fmt: skip
        wait_serving(plane, "flaky", 1, timeout=60)
        settled = time.monotonic()
        time.sleep(2)
    finally:
        load.stop()
    [failed] = events(plane, "flaky", "deployment.failed")
    assert "crashed 2 times" in failed["after"]["reason"], failed
    assert "exited with code 3" in failed["after"]["reason"], failed
    assert load.seen[3.0] > 0, load.seen  # v2 answered between its crashes
    print(f"\ncrash every 25th call: {sum(load.seen.values())} answered, "
          f"{len(load.failures)} failed while v2 crash-looped; v1 back by rollback")  # fmt: skip
    assert load.window(settled, time.monotonic())[0] > 0
    undeploy(plane, "flaky")
