"""Scenario 10: SIGTERM to every kind of process while work is in flight. A control plane
finishes the upload it is streaming, then exits;
a worker drains its serving process (calls in flight finish; later ones fail cleanly, 503
with Retry-After, until the replica runs on the other worker) and exits 0. Nothing is left
half-written. (A serving process alone: tests/serving/test_process.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import API, Load, manifest, sha, start_cp
from bench.harness import SIGNATURE, push_version, torchscript_bytes
from tests.e2e.deploy_helpers import api, ready_endpoints, serving_pid, wait_serving
from tests.faults.conftest import FaultPlatform

pytestmark = pytest.mark.timeout(240)
MiB = 2**20


def _blobs_hash_to_their_keys(plane: FaultPlatform) -> int:
    client = plane.seaweed.client()
    listed = client.list_objects_v2(Bucket=plane.bucket, Prefix="mp/blobs/sha256/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    for key in keys:
        body = client.get_object(Bucket=plane.bucket, Key=key)["Body"].read()
        assert sha(body) == key.rsplit("/", 1)[1], f"{key} is half-written or wrong"
    return len(keys)


def test_sigterm_control_plane_finishes_the_upload_in_flight(
    plane: FaultPlatform, tmp_path: Path
) -> None:
    cp = start_cp(tmp_path, plane.env, name="cp-term")
    http = httpx.Client(base_url=cp.url, timeout=60)
    data = os.urandom(6 * MiB + 5)
    assert http.post(f"{API}/models", json={"name": "interrupted"}).status_code == 201
    created = http.post(
        f"{API}/models/interrupted/versions", json={"files": manifest({"w": data})}
    ).json()
    answers: list[httpx.Response | Exception] = []
    signalled = threading.Event()

    def body() -> Iterator[bytes]:
        for offset in range(0, len(data), 512 * 1024):
            if offset == 2 * MiB:
                os.kill(cp.pid, signal.SIGTERM)
                signalled.set()
            time.sleep(0.05)  # a slow client: the upload outlasts the signal by seconds
            yield data[offset : offset + 512 * 1024]

    def upload() -> None:
        try:
            answers.append(http.put(created["files"][0]["upload"]["url"], content=body()))
        except httpx.HTTPError as exc:
            answers.append(exc)

    sender = threading.Thread(target=upload)
    sender.start()
    sender.join(90)
    assert signalled.is_set()
    [answer] = answers
    assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
    # uvicorn finishes what is in flight, then re-raises the signal: dying by SIGTERM after
    # "Finished server process" is its clean exit.
    assert cp.process.wait(30) in (0, -signal.SIGTERM), cp.log()
    assert "Finished server process" in cp.log_path.read_text()
    # Another control plane finds the file stored whole: the version finalizes.
    done = httpx.post(f"{plane.cp.api}/models/interrupted/versions/1/finalize", timeout=30)
    assert done.status_code == 200 and done.json()["status"] == "ready", done.text
    assert _blobs_hash_to_their_keys(plane) > 0


def test_sigterm_worker_drains_and_calls_fail_cleanly(plane: FaultPlatform, tmp_path: Path) -> None:
    v1 = torchscript_bytes(1.0, tmp_path / "drained-1.pt")
    push_version(plane.cp.url, "drained", {"model.pt": v1}, "torchscript", None,
                 signature=SIGNATURE)  # fmt: skip
    body = {"name": "drained", "model": "drained", "version": 1, "replicas": 1}
    assert api(plane, "POST", "/deployments", json=body).status_code == 201
    wait_serving(plane, "drained", 1, timeout=90)
    [endpoint] = ready_endpoints(plane, "drained", 1)
    owner, pid = serving_pid(plane, endpoint["url"])
    load = Load(f"{plane.cp.url}/serve/drained", "drained", rate=50, concurrency=2)
    load.start()
    try:
        time.sleep(1)
        worker = plane.workers[owner]
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(40) == 0, worker.log()
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "serving process left behind"
        wait_serving(plane, "drained", 1, timeout=90)  # on the other worker
        time.sleep(1)
    finally:
        load.stop()
        plane.start_worker(owner)
    unclean = [f for f in load.failures if not f.startswith("503")]
    print(f"\nworker SIGTERM: {sum(load.seen.values())} calls answered, "
          f"{len(load.failures)} answered 503 while the replica moved")  # fmt: skip
    assert unclean == [], unclean[:5]
    assert api(plane, "DELETE", "/deployments/drained").status_code in (202, 204)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
