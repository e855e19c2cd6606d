"""Scenario 4: a second control plane on the same database and store is killed (-9) in the
middle of a multipart upload, of a proxied upload and of a rollout request. The first one
carries on: the upload resumes from the parts already stored, the rollout finishes, and
nothing is recorded twice or half."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import API, Load, manifest, sha, start_cp
from bench.harness import (
    SIGNATURE,
    ControlPlane,
    push_version,
    torch_export_bytes,
    torchscript_bytes,
    wait_for,
)
from tests.e2e.deploy_helpers import api, ready_endpoints, wait_serving
from tests.faults.conftest import FaultPlatform

pytestmark = pytest.mark.timeout(240)
MiB = 2**20
PART = 5 * MiB


@pytest.fixture
def cp2(plane: FaultPlatform, tmp_path: Path) -> Iterator[ControlPlane]:
    """Another control plane on the platform's database and bucket (the doomed one)."""
    env = {
        **plane.env,
        "MODELPLANE_MULTIPART_THRESHOLD": str(6 * MiB),
        "MODELPLANE_MULTIPART_PART_SIZE": str(PART),
    }
    other = start_cp(tmp_path, env, name="cp2")
    yield other
    if other.process.poll() is None:
        other.stop()


def _version(http: httpx.Client, model: str, data: bytes) -> dict[str, Any]:
    assert http.post(f"{API}/models", json={"name": model}).status_code == 201
    created = http.post(f"{API}/models/{model}/versions", json={"files": manifest({"w": data})})
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _final_keys(plane: FaultPlatform) -> set[str]:
    listed = plane.seaweed.client().list_objects_v2(Bucket=plane.bucket, Prefix="mp/blobs/")
    return {o["Key"] for o in listed.get("Contents", [])}


def test_kill9_during_a_multipart_upload_resumes_on_the_other(
    plane: FaultPlatform, cp2: ControlPlane
) -> None:
    data = os.urandom(4 * PART - 1000)
    doomed = httpx.Client(base_url=cp2.url, timeout=60)
    version = _version(doomed, "resumed", data)
    assert version["files"][0]["upload"]["multipart"] is not None
    multipart = f"{API}/models/resumed/versions/1/files/w/multipart"
    started = doomed.post(multipart).json()
    for part in started["parts"][:2]:
        offset = (part["part_number"] - 1) * started["part_size"]
        put = httpx.put(part["url"], content=data[offset : offset + started["part_size"]])
        assert put.status_code == 200, put.text
    cp2.kill9()

    http = httpx.Client(base_url=plane.cp.url, timeout=60)
    resumed = http.post(multipart)
    assert resumed.status_code == 200, resumed.text
    again = resumed.json()
    assert again["upload_id"] == started["upload_id"]
    assert [p["part_number"] for p in again["completed_parts"]] == [1, 2]
    for part in again["parts"][2:]:
        offset = (part["part_number"] - 1) * again["part_size"]
        put = httpx.put(part["url"], content=data[offset : offset + again["part_size"]])
        assert put.status_code == 200, put.text
    done = http.post(f"{multipart}/complete")
    assert done.status_code == 200, done.text
    final = http.post(f"{API}/models/resumed/versions/1/finalize")
    assert final.status_code == 200 and final.json()["status"] == "ready", final.text
    back = http.get(f"{API}/models/resumed/versions/1/files/w")
    assert sha(back.content) == sha(data)


def test_kill9_during_a_proxied_upload_leaves_nothing_and_the_retry_succeeds(
    plane: FaultPlatform, cp2: ControlPlane
) -> None:
    data = os.urandom(3 * MiB + 17)  # under cp2's threshold: proxied through it
    doomed = httpx.Client(base_url=cp2.url, timeout=60)
    version = _version(doomed, "proxied", data)
    url = version["files"][0]["upload"]["url"]

    def body() -> Iterator[bytes]:
        for offset in range(0, len(data), 256 * 1024):
            if offset == 2 * MiB:
                cp2.kill9()
            yield data[offset : offset + 256 * 1024]

    before = _final_keys(plane)
    with pytest.raises(httpx.HTTPError):
        doomed.put(url, content=body())
    assert _final_keys(plane) == before
    http = httpx.Client(base_url=plane.cp.url, timeout=60)
    pending = http.get(f"{API}/models/proxied/versions/1").json()
    assert pending["status"] == "pending" and pending["files"][0]["present"] is False
    retry = http.put(url, content=data)
    assert retry.status_code == 200, retry.text
    final = http.post(f"{API}/models/proxied/versions/1/finalize")
    assert final.status_code == 200 and final.json()["status"] == "ready", final.text
    assert _final_keys(plane) == before | {f"mp/blobs/sha256/{sha(data)}"}


def test_kill9_during_a_rollout_request_the_rollout_finishes(
    plane: FaultPlatform, cp2: ControlPlane, tmp_path: Path
) -> None:
    v1 = torchscript_bytes(1.0, tmp_path / "relay-1.pt")
    push_version(plane.cp.url, "relay", {"model.pt": v1}, "torchscript", None, signature=SIGNATURE)
    v2 = torch_export_bytes(2.0, tmp_path / "relay-2.pt2")
    push_version(plane.cp.url, "relay", {"model.pt2": v2}, "torch_export", None)
    body = {"name": "relay", "model": "relay", "version": 1}
    assert api(plane, "POST", "/deployments", json=body).status_code == 201
    wait_serving(plane, "relay", 1, timeout=90)
    load = Load(f"{plane.cp.url}/serve/relay", "relay", rate=50, concurrency=2)
    load.start()
    try:
        answers: list[httpx.Response | Exception] = []

        def patch() -> None:
            try:
                answers.append(
                    httpx.patch(f"{cp2.api}/deployments/relay", json={"version": 2}, timeout=30)
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        sender = threading.Thread(target=patch)
        sender.start()
        time.sleep(0.05)  # the request is on its way or being handled
        cp2.kill9()
        sender.join(30)
        # The client does not know whether it landed: it sends it again, to the survivor.
        retry = api(plane, "PATCH", "/deployments/relay", json={"version": 2})
        assert retry.status_code == 200, retry.text
        wait_serving(plane, "relay", 2, timeout=90)
        wait_for("v1 gone", lambda: not ready_endpoints(plane, "relay", 1), 30, plane.logs)
    finally:
        load.stop()
    print(f"\nPATCH to the killed control plane: {answers[0]!r}")
    revisions = api(plane, "GET", "/deployments/relay/revisions").json()["items"]
    assert sorted((r["revision"], r["version"]) for r in revisions) == [(1, 1), (2, 2)]
    assert load.failures == [], load.failures[:5]
    assert api(plane, "DELETE", "/deployments/relay").status_code in (202, 204)
