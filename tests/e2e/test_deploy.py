"""Deployments end to end: real control plane, deployer workers and serving processes.

One flow per test on the package's platform (tests/e2e/conftest.py): deploy → ready →
infer (tritonclient binary and JSON, direct and through `/serve/{name}`) → update while a
client keeps calling → rollback → delete; kill -9 of a serving process and of a worker;
bytes that no longer match their digest.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bench.harness import (
    SIGNATURE,
    push_version,
    torch_export_bytes,
    torchscript_bytes,
    wait_for,
)
from tests.e2e.conftest import Platform
from tests.e2e.deploy_helpers import (
    Caller,
    api,
    deployment,
    infer_json,
    infer_triton,
    ready_endpoints,
    serving_pid,
    wait_serving,
)

pytestmark = pytest.mark.timeout(120)


def push_two_versions(plane: Platform, model: str, tmp_path: Path) -> None:
    """v1: TorchScript y = x + 1; v2: torch.export y = x + 2."""
    v1 = torchscript_bytes(1.0, tmp_path / f"{model}-1.pt")
    push_version(
        plane.cp.url, model, {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    v2 = torch_export_bytes(2.0, tmp_path / f"{model}-2.pt2")
    push_version(plane.cp.url, model, {"model.pt2": v2}, "torch_export", plane.token)


def deploy(plane: Platform, name: str, version: int) -> float:
    """Creates the deployment and waits until a call through it succeeds: the seconds taken."""
    started = time.monotonic()
    body = {"name": name, "model": name, "version": version, "replicas": 1}
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text
    wait_serving(plane, name, version)
    assert infer_json(f"{plane.cp.url}/serve/{name}", name, plane.token) == [2.0, 3.0, 4.0, 5.0]
    return time.monotonic() - started


def test_deploy_infer_update_rollback_delete(plane: Platform, tmp_path: Path) -> None:
    push_two_versions(plane, "adder", tmp_path)
    took = deploy(plane, "adder", 1)
    print(f"deploy to first infer: {took:.2f}s")

    [endpoint] = ready_endpoints(plane, "adder", 1)
    stable = f"{plane.cp.url}/serve/adder"
    for url in (endpoint["url"], stable):
        for binary in (True, False):
            y = infer_triton(url, "adder", plane.token, binary=binary)
            np.testing.assert_array_equal(y, np.array([[2, 3, 4, 5]], dtype=np.float32))

    caller = Caller(stable, "adder", plane.token)
    caller.start()
    try:
        answer = api(plane, "PATCH", "/deployments/adder", json={"version": 2})
        assert answer.status_code == 200, answer.text
        wait_serving(plane, "adder", 2)
        assert infer_json(stable, "adder", plane.token) == [3.0, 4.0, 5.0, 6.0]
        wait_for("the old endpoint gone", lambda: not ready_endpoints(plane, "adder", 1), 20,
                 plane.logs)  # fmt: skip

        answer = api(plane, "POST", "/deployments/adder/rollback", json={})
        assert answer.status_code == 200, answer.text
        wait_serving(plane, "adder", 1)
        wait_for("v2 endpoint gone", lambda: not ready_endpoints(plane, "adder", 2), 20,
                 plane.logs)  # fmt: skip
    finally:
        caller.stop()
    assert caller.failures == [], caller.failures[:5]
    assert caller.seen[2.0] > 0 and caller.seen[3.0] > 0, caller.seen
    revisions = api(plane, "GET", "/deployments/adder/revisions").json()["items"]
    assert sorted((r["revision"], r["version"], r["reason"]) for r in revisions) == [
        (1, 1, "create"),
        (2, 2, "update"),
        (3, 1, "rollback"),
    ]

    answer = api(plane, "DELETE", "/deployments/adder")
    assert answer.status_code in (202, 204), answer.text
    wait_for(
        "adder deleted",
        lambda: api(plane, "GET", "/deployments/adder").status_code == 404,
        30,
        plane.logs,
    )
    port = int(endpoint["url"].rsplit(":", 1)[1])
    _, pid = serving_pid(plane, endpoint["url"])
    wait_for("serving process gone", lambda: not _alive(pid), 15, plane.logs)
    assert port


def test_kill9_serving_process_is_restarted(plane: Platform, tmp_path: Path) -> None:
    push_two_versions(plane, "crashy", tmp_path)
    deploy(plane, "crashy", 1)
    [endpoint] = ready_endpoints(plane, "crashy", 1)
    _, pid = serving_pid(plane, endpoint["url"])
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        [replica] = [
            r for r in deployment(plane, "crashy")["observed"]["replicas"] if r["desired"] == "run"
        ]
        return replica["restarts"] >= 1 and replica["state"] == "ready"

    wait_for("crashy restarted", restarted, 30, plane.logs)
    wait_serving(plane, "crashy", 1)
    assert infer_json(f"{plane.cp.url}/serve/crashy", "crashy", plane.token) == [2.0, 3.0, 4.0, 5.0]
    assert api(plane, "DELETE", "/deployments/crashy").status_code in (202, 204)


def test_bytes_that_do_not_match_fail_the_rollout_and_old_keeps_serving(
    plane: Platform, tmp_path: Path
) -> None:
    push_two_versions(plane, "tamper", tmp_path)
    deploy(plane, "tamper", 1)
    v2 = api(plane, "GET", "/models/tamper/versions/2").json()
    [file] = v2["files"]
    key = f"mp/blobs/sha256/{file['sha256']}"
    plane.seaweed.client().put_object(Bucket=plane.bucket, Key=key, Body=b"\0" * file["size"])

    caller = Caller(f"{plane.cp.url}/serve/tamper", "tamper", plane.token)
    caller.start()
    try:
        answer = api(plane, "PATCH", "/deployments/tamper", json={"version": 2})
        assert answer.status_code == 200, answer.text

        def failed() -> dict[str, object] | None:
            body = deployment(plane, "tamper")
            return body if body["status"] == "failed" else None

        body = wait_for("tamper failed", failed, 30, plane.logs)
        assert "sha256 mismatch" in str(body["status_reason"]), body
        time.sleep(1)
    finally:
        caller.stop()
    assert caller.failures == [] and set(caller.seen) == {2.0}, (caller.failures[:5], caller.seen)
    assert ready_endpoints(plane, "tamper", 1)
    assert api(plane, "DELETE", "/deployments/tamper").status_code in (202, 204)


def test_a_version_that_cannot_load_fails_after_restarts_and_old_keeps_serving(
    plane: Platform, tmp_path: Path
) -> None:
    v1 = torchscript_bytes(1.0, tmp_path / "broken-1.pt")
    push_version(
        plane.cp.url, "broken", {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    push_version(
        plane.cp.url,
        "broken",
        {"model.pt": b"not a TorchScript archive"},
        "torchscript",
        plane.token,
    )
    deploy(plane, "broken", 1)
    caller = Caller(f"{plane.cp.url}/serve/broken", "broken", plane.token)
    caller.start()
    try:
        answer = api(plane, "PATCH", "/deployments/broken", json={"version": 2})
        assert answer.status_code == 200, answer.text

        def failed() -> dict[str, object] | None:
            body = deployment(plane, "broken")
            return body if body["status"] == "failed" else None

        body = wait_for("broken failed", failed, 45, plane.logs)
    finally:
        caller.stop()
    reason = str(body["status_reason"])
    # The serving process announces `failed` with its error before it exits; the worker's own
    # account ("crashed 2 times; last: exited with code 1: …") follows its restarts.
    assert "cannot load" in reason or "exited with code 1" in reason, body
    assert caller.failures == [] and set(caller.seen) == {2.0}, (caller.failures[:5], caller.seen)
    assert api(plane, "DELETE", "/deployments/broken").status_code in (202, 204)


def test_kill9_worker_hands_its_replicas_to_the_other(plane: Platform, tmp_path: Path) -> None:
    push_two_versions(plane, "orphan", tmp_path)
    deploy(plane, "orphan", 1)
    [endpoint] = ready_endpoints(plane, "orphan", 1)
    owner, pid = serving_pid(plane, endpoint["url"])
    plane.workers[owner].kill9()
    wait_for("its serving process to follow it", lambda: not _alive(pid), 15, plane.logs)

    def moved() -> list[dict[str, object]]:
        return [e for e in ready_endpoints(plane, "orphan", 1) if e["url"] != endpoint["url"]]

    [moved_to] = wait_for("orphan on the other worker", moved, 40, plane.logs)
    assert serving_pid(plane, str(moved_to["url"]))[0] != owner
    assert infer_json(f"{plane.cp.url}/serve/orphan", "orphan", plane.token) == [2.0, 3.0, 4.0, 5.0]
    plane.start_worker(owner)  # the next tests find two workers again


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of a dead worker's child: reaped by init, gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
