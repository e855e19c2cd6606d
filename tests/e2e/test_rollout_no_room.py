"""Rollouts on a full host, with real processes: one deployer worker with 2 CPU slots.

With 2 replicas and no room for a third process, an old replica stops first and the other
keeps serving, so a client calling through the stable URL sees no failure. With a single
replica and no room the rollout waits, `pending` with its reason, the old version still
serving, until `max_unavailable: 1` allows stopping it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import (
    SIGNATURE,
    push_version,
    torch_export_bytes,
    torchscript_bytes,
    wait_for,
)
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.deploy_helpers import Caller, api, deployment, infer_json, wait_serving

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def full(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(seaweed, tmp_path_factory, {"full": 2}) as platform:
        yield platform


def events(plane: Platform, name: str) -> list[dict[str, Any]]:
    answer = api(plane, "GET", "/events", params={"deployment": name, "limit": 1000})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def test_a_full_host_rolls_out_stop_first(full: Platform, tmp_path: Path) -> None:
    plane = full
    v1 = torchscript_bytes(1.0, tmp_path / "tight-1.pt")
    push_version(
        plane.cp.url, "tight", {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    v2 = torch_export_bytes(2.0, tmp_path / "tight-2.pt2")
    push_version(plane.cp.url, "tight", {"model.pt2": v2}, "torch_export", plane.token)
    push_version(
        plane.cp.url, "filler", {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    body = {"name": "tight", "model": "tight", "version": 1, "replicas": 2}
    assert api(plane, "POST", "/deployments", json=body).status_code == 201
    wait_serving(plane, "tight", 1, timeout=90)
    stable = f"{plane.cp.url}/serve/tight"

    # 2 replicas, 2 slots: one old replica stops first, the other keeps serving
    caller = Caller(stable, "tight", plane.token)
    caller.start()
    try:
        answer = api(plane, "PATCH", "/deployments/tight", json={"version": 2})
        assert answer.status_code == 200, answer.text
        assert "stopping old replicas first" in str(answer.json()["status_reason"])
        wait_serving(plane, "tight", 2, timeout=120)
    finally:
        caller.stop()
    assert caller.failures == [], caller.failures[:5]
    assert caller.seen[2.0] > 0 and caller.seen[3.0] > 0, caller.seen
    story = events(plane, "tight")
    first_stop = min(
        e["id"]
        for e in story
        if e["action"] == "replica.stop_requested" and e["after"]["revision"] == 1
    )
    first_new = min(
        e["id"]
        for e in story
        if e["action"] == "replica.state_changed" and e["after"]["revision"] == 2
    )
    assert first_stop < first_new  # stop first: nothing of revision 2 ran before

    # 1 replica beside a filler deployment: no room, and a single replica does not stop first
    answer = api(plane, "PATCH", "/deployments/tight", json={"replicas": 1, "version": 1})
    assert answer.status_code == 200, answer.text
    wait_serving(plane, "tight", 1, timeout=90)
    filler = {"name": "filler", "model": "filler", "version": 1}
    assert api(plane, "POST", "/deployments", json=filler).status_code == 201
    wait_serving(plane, "filler", 1, timeout=90)
    answer = api(plane, "PATCH", "/deployments/tight", json={"version": 2})
    assert answer.status_code == 200, answer.text
    body = deployment(plane, "tight")
    assert body["status"] == "pending", body
    assert "set max_unavailable to 1" in str(body["status_reason"]), body
    for _ in range(3):  # the old version keeps serving
        assert infer_json(stable, "tight", plane.token) == [2.0, 3.0, 4.0, 5.0]
    answer = api(plane, "PATCH", "/deployments/tight", json={"max_unavailable": 1})
    assert answer.status_code == 200, answer.text
    wait_serving(plane, "tight", 2, timeout=90)
    assert infer_json(f"{plane.cp.url}/serve/filler", "filler", plane.token) == [2.0, 3.0, 4.0, 5.0]
    for name in ("tight", "filler"):
        assert api(plane, "DELETE", f"/deployments/{name}").status_code in (202, 204)
    wait_for(
        "both deleted",
        lambda: all(
            api(plane, "GET", f"/deployments/{n}").status_code == 404 for n in ("tight", "filler")
        ),
        40,
        plane.logs,
    )
