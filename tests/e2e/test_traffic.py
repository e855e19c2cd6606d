"""Traffic end to end (issue 15): canaries, fixed splits, version-addressed calls and pins,
shadows, through the embedded gateway of a real control plane (and an erring canary through
``python -m gateway --engine haproxy``, decided on HAProxy's counts), with a real worker and
serving processes of `behave` models (tests/support/behaviour_runtime.py: version N answers
x + N, so each answer tells which version served it). Auth is on. One platform for the
module; each test deletes its deployments, the load is ~60–80 calls/s to 127.0.0.1.

Shares are counted by the client from the answers, in the middle of each step (the route
feed moves within a fraction of a second, the margins allow a few).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import auth, wait_for
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform
from tests.e2e.deploy_helpers import api, deployment
from tests.e2e.traffic_helpers import (
    BODY,
    Call,
    Load,
    answered_by,
    behaviour_platform,
    delete,
    deploy,
    failures,
    infer_url,
    pinned,
    push_behaviours,
    wait_canary,
)
from tests.gateway.harness import Process, free_port, haproxy_binary

pytestmark = pytest.mark.timeout(240)

SETTLE_S = 2.0  # after a step starts: the route feed reaching the gateway, calls in flight
RATE = 80.0  # calls/s of the load


@pytest.fixture(scope="module")
def traffic_plane(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    with behaviour_platform(seaweed, tmp_path_factory, cpu_slots=4) as platform:
        yield platform


@pytest.fixture
def made(traffic_plane: Platform) -> Iterator[list[str]]:
    """Deployments a test made, deleted after it (passed or not) to free the worker's slots."""
    names: list[str] = []
    yield names
    for name in names:
        delete(traffic_plane, name)


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _share(calls: list[Call], version: int) -> float:
    seen = answered_by(calls)
    return 100.0 * seen[version] / max(1, sum(seen.values()))


def _canary_patch(version: int, **spec: Any) -> dict[str, Any]:
    return {"version": version, "strategy": {"canary": spec}}


def _canary_revision(plane: Platform, name: str) -> dict[str, Any]:
    answer = api(plane, "GET", f"/deployments/{name}/revisions")
    assert answer.status_code == 200, answer.text
    canaries: list[dict[str, Any]] = [r for r in answer.json()["items"] if r["reason"] == "canary"]
    [revision] = canaries
    return revision


def _events(plane: Platform, name: str, action: str) -> list[dict[str, Any]]:
    answer = api(plane, "GET", "/events", params={"deployment": name, "action": action})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def _revision_traffic(plane: Platform, name: str, revision: int) -> dict[str, Any] | None:
    """The revision's series over the last 5 minutes (None: nothing counted yet)."""
    answer = api(plane, "GET", f"/deployments/{name}/traffic", params={"minutes": 5})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = [
        r for r in answer.json()["revisions"] if r["revision"] == revision
    ]
    return found[0] if found else None


def _counted(plane: Platform, name: str, revision: int) -> tuple[int, int]:
    """(calls, errors) the gateways counted for a revision in the last 2 minutes, from
    the series in 1 s buckets (whole buckets: calls = calls/s; the newest, still filling,
    must be empty)."""
    answer = api(plane, "GET", f"/deployments/{name}/traffic", params={"minutes": 2, "bucket_s": 1})
    assert answer.status_code == 200, answer.text
    [series] = [r for r in answer.json()["revisions"] if r["revision"] == revision]
    *whole, newest = series["points"]
    assert newest["calls_per_s"] == 0, newest
    calls = [round(p["calls_per_s"]) for p in whole]
    errors = [round(n * (p["error_rate"] or 0)) for n, p in zip(calls, whole, strict=True)]
    return sum(calls), sum(errors)


def test_a_good_canary_walks_10_50_100_under_load(traffic_plane: Platform, made: list[str]) -> None:
    plane = traffic_plane
    push_behaviours(plane, "walk", {}, {})
    deploy(plane, "walk", 1)
    made.append("walk")
    spec: dict[str, Any] = {
        "steps": [10, 50, 100],
        "interval_s": 18,
        "min_calls": 30,
        "max_error_rate": 0.01,
    }
    steps: dict[int, float] = {}  # step index -> when it started (wall clock)
    with Load(infer_url(plane, "walk"), plane.token, rate=RATE, concurrency=6) as load:
        time.sleep(1.0)
        asked = time.time()
        answer = api(plane, "PATCH", "/deployments/walk", json=_canary_patch(2, **spec))
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            canary = deployment(plane, "walk")["canary"]
            if canary["state"] == "running" and canary["step_started_at"]:
                steps.setdefault(canary["step"], _at(canary["step_started_at"]))
            if canary["state"] not in ("waiting", "running"):
                break
            time.sleep(0.2)
        assert canary["state"] == "promoted", canary
        promoted = time.time()
        time.sleep(3.0)
    body = deployment(plane, "walk")
    assert body["version"] == 2, body

    assert failures(load.calls) == [], failures(load.calls)[:5]
    assert sorted(steps) == [0, 1], steps
    print(
        f"\ncanary walk: {len(load.calls)} calls, 0 failed; ready after "
        f"{steps[0] - asked:.1f}s, promoted {promoted - asked:.1f}s after the PATCH"
    )
    ends = {0: steps[1], 1: promoted}
    for step, percent in enumerate(spec["steps"][:2]):
        window = load.between(steps[step] + SETTLE_S, ends[step] - 0.5)
        share = _share(window, 2)
        print(f"  step {step} ({percent}%): v2 answered {share:.1f}% of {len(window)} calls")
        assert len(window) >= 300, (step, len(window))
        assert abs(share - percent) <= 5, (step, percent, share, answered_by(window))
    after = load.between(promoted + SETTLE_S, time.time())
    assert after and answered_by(after) == {2: len(after)}, answered_by(after)


def test_a_canary_erring_on_30_percent_is_rolled_back_within_an_interval(
    traffic_plane: Platform, made: list[str]
) -> None:
    plane = traffic_plane
    push_behaviours(plane, "flaky", {}, {"error_rate": 0.3})
    deploy(plane, "flaky", 1)
    made.append("flaky")
    spec: dict[str, Any] = {
        "steps": [25, 50, 100],
        "interval_s": 20,
        "min_calls": 30,
        "max_error_rate": 0.05,
    }
    with Load(infer_url(plane, "flaky"), plane.token, rate=60, concurrency=4) as load:
        time.sleep(1.0)
        asked = time.time()
        answer = api(plane, "PATCH", "/deployments/flaky", json=_canary_patch(2, **spec))
        assert answer.status_code == 200, answer.text
        running = wait_canary(plane, "flaky", {"running"}, 60)
        ended = wait_canary(plane, "flaky", {"rolled_back", "promoted"}, spec["interval_s"] + 5)
        time.sleep(3.0)  # calls after the verdict: all the base's
    assert ended["state"] == "rolled_back", ended
    started_at = _at(running["step_started_at"])
    revision = _canary_revision(plane, "flaky")
    verdict = revision["verdict"]
    assert verdict["state"] == "rolled_back", verdict
    verdict_at = _at(verdict["at"])
    took = verdict_at - started_at
    assert took < spec["interval_s"], (took, verdict)
    [event] = _events(plane, "flaky", "deployment.canary_rolled_back")
    assert event["after"]["state"] == "rolled_back", event

    failed = failures(load.calls)
    before = [c for c in failed if c.at <= verdict_at]
    late = [c for c in failed if c.at > verdict_at + SETTLE_S]
    figures = verdict["figures"]
    time.sleep(2.5)  # the gateway's last report of the canary's calls
    calls, errors = _counted(plane, "flaky", revision["revision"])
    first = min(c.at for c in load.calls if c.value != 2.0)  # x + 1: the base's answer
    print(
        f"\nerring canary: its first call {first - started_at:.1f}s after its step started; "
        f"rolled back {took:.1f}s after the step started, "
        f"{verdict_at - asked:.1f}s after the PATCH ({verdict['reason']}); "
        f"{len(failed)} of {len(load.calls)} calls failed, {len(before)} before the verdict, "
        f"{len(failed) - len(before)} in flight after it; the gateway counted {errors} errors "
        f"in the canary's {calls} calls; the verdict's figures: {figures}"
    )
    assert late == [], late
    assert all(c.status == 500 and "fails by design" in c.error for c in failed), failed
    assert answered_by(load.between(verdict_at + SETTLE_S, time.time())).keys() == {1}
    # every failed call was the canary's and counted: those before the verdict in its
    # figures, the few in flight as it was taken after
    assert errors == len(failed), (errors, len(failed))
    assert 0 < figures["errors"] <= len(failed), (figures, len(failed))
    assert figures["error_rate"] > spec["max_error_rate"], figures


def test_a_canary_sleeping_200ms_breaches_max_p99_and_is_rolled_back(
    traffic_plane: Platform, made: list[str]
) -> None:
    plane = traffic_plane
    push_behaviours(plane, "slow", {}, {"sleep_ms": 200})
    deploy(plane, "slow", 1)
    made.append("slow")
    spec: dict[str, Any] = {
        "steps": [20, 100],
        "interval_s": 20,
        "min_calls": 20,
        "max_p99_ms": 100,
    }
    with Load(infer_url(plane, "slow"), plane.token, rate=30, concurrency=8) as load:
        time.sleep(1.0)
        answer = api(plane, "PATCH", "/deployments/slow", json=_canary_patch(2, **spec))
        assert answer.status_code == 200, answer.text
        running = wait_canary(plane, "slow", {"running"}, 60)
        ended = wait_canary(plane, "slow", {"rolled_back", "promoted"}, spec["interval_s"] + 5)
    assert ended["state"] == "rolled_back", ended
    verdict = _canary_revision(plane, "slow")["verdict"]
    took = _at(verdict["at"]) - _at(running["step_started_at"])
    print(
        f"\nslow canary: rolled back {took:.1f}s after it started taking calls "
        f"({verdict['reason']}); figures {verdict['figures']}, base {verdict['base_figures']}"
    )
    assert verdict["figures"]["p99_ms"] > spec["max_p99_ms"], verdict
    assert "p99" in verdict["reason"], verdict
    assert failures(load.calls) == [], failures(load.calls)[:5]
    assert deployment(plane, "slow")["version"] == 1


@pytest.fixture(scope="module")
def split(traffic_plane: Platform) -> Iterator[str]:
    """Deployment `split` of model `split` (v1, v2, v3): 90% v1, 10% v2; v3 not served."""
    plane = traffic_plane
    push_behaviours(plane, "split", {}, {}, {})
    body = {
        "name": "split",
        "model": "split",
        "replicas": 1,
        "traffic": [{"version": 1, "percent": 90}, {"version": 2, "percent": 10}],
    }
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text

    def both_answer() -> bool:
        with httpx.Client(timeout=10, headers=auth(plane.token)) as http:
            return all(
                (a := http.post(infer_url(plane, "split", v), json=BODY)).status_code == 200
                and a.json()["outputs"][0]["data"][0] == 1 + v
                for v in (1, 2)
            )

    wait_for("both versions of split serving", both_answer, 90, plane.logs)
    yield "split"
    delete(plane, "split")


def test_a_fixed_90_10_split_holds_over_2000_calls(traffic_plane: Platform, split: str) -> None:
    load = Load(infer_url(traffic_plane, split), traffic_plane.token, rate=100, concurrency=8)
    load.limit = 2000
    with load:
        load.wait(90)
    seen = answered_by(load.calls)
    share = _share(load.calls, 2)
    print(f"\n90/10 split: {dict(seen)} of {len(load.calls)} calls: v2 {share:.1f}%")
    assert len(load.calls) == 2000 and seen[None] == 0, seen
    assert abs(share - 10) <= 3, seen


def test_version_addressed_calls_and_pins_reach_only_their_version(
    traffic_plane: Platform, split: str
) -> None:
    plane = traffic_plane
    for version in (1, 2):
        for url, headers in (
            (infer_url(plane, split, version), {}),
            (infer_url(plane, split), pinned(version)),
        ):
            load = Load(url, plane.token, rate=200, concurrency=4, headers=headers)
            load.limit = 100
            with load:
                load.wait(30)
            assert answered_by(load.calls) == {version: 100}, (url, headers)
    with httpx.Client(timeout=10, headers=auth(plane.token)) as http:
        for url, headers in (
            (infer_url(plane, split, 3), {}),
            (infer_url(plane, split), pinned(3)),
            (infer_url(plane, split, 9), {}),
        ):
            answer = http.post(url, json=BODY, headers=headers)
            assert answer.status_code == 404, answer.text
            assert "serves 1, 2" in answer.text, answer.text


def test_a_shadow_is_compared_and_never_answers(traffic_plane: Platform, made: list[str]) -> None:
    plane = traffic_plane
    push_behaviours(plane, "mirror", {}, {})
    deploy(plane, "mirror", 1)
    made.append("mirror")
    answer = api(
        plane, "PATCH", "/deployments/mirror", json={"shadow": {"version": 2, "percent": 100}}
    )
    assert answer.status_code == 200, answer.text
    [lane] = [x for x in answer.json()["lanes"] if x["role"] == "shadow"]

    def shadow_compared() -> dict[str, Any] | None:
        load = Load(infer_url(plane, "mirror"), plane.token, rate=50, concurrency=2)
        load.limit = 20
        with load:
            load.wait(30)
        assert answered_by(load.calls) == {1: 20}, answered_by(load.calls)
        series = _revision_traffic(plane, "mirror", lane["revision"])
        return series if series and series["shadow_disagreements"] > 0 else None

    wait_for("the shadow's first comparisons", shadow_compared, 60, plane.logs)
    load = Load(infer_url(plane, "mirror"), plane.token, rate=60, concurrency=4)
    load.limit = 300
    with load:
        load.wait(60)
    assert answered_by(load.calls) == {1: 300}, answered_by(load.calls)
    time.sleep(2.5)  # the gateway's next report
    series = _revision_traffic(plane, "mirror", lane["revision"])
    assert series is not None
    compared = series["shadow_compared"]
    print(
        f"\nshadow: {series['shadow_calls']} mirrored, {compared} compared, "
        f"{series['shadow_disagreements']} disagreed, {series['shadow_dropped']} dropped"
    )
    assert series["shadow_errors"] == 0, series
    assert series["shadow_disagreements"] == compared > 300, series


@pytest.fixture(scope="module")
def native_gateway(traffic_plane: Platform) -> Iterator[str]:
    """``python -m gateway --engine haproxy`` following the platform's control plane."""
    haproxy_binary()
    key = api(traffic_plane, "POST", "/keys", json={"name": "native", "scopes": ["gateway"]})
    assert key.status_code == 201, key.text
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--engine", "haproxy", "--registry-url",
            traffic_plane.cp.url, "--port", str(port), "--id", "native"]  # fmt: skip
    log = Path(traffic_plane.log_dir) / "gateway-native.log"
    gateway = Process(argv, port, log, "/readyz", MODELPLANE_GATEWAY_TOKEN=key.json()["token"])
    yield gateway.url
    gateway.stop()


def test_through_haproxy_an_erring_canary_is_rolled_back_on_haproxys_counts(
    traffic_plane: Platform, native_gateway: str, made: list[str]
) -> None:
    plane = traffic_plane
    push_behaviours(plane, "hflaky", {}, {"error_rate": 0.3})
    deploy(plane, "hflaky", 1)
    made.append("hflaky")
    spec: dict[str, Any] = {"steps": [25, 50, 100], "interval_s": 20, "min_calls": 30,
                            "max_error_rate": 0.05}  # fmt: skip
    url = infer_url(plane, "hflaky").replace(plane.cp.url, native_gateway)
    with Load(url, plane.token, rate=60, concurrency=4) as load:
        time.sleep(1.0)
        answer = api(plane, "PATCH", "/deployments/hflaky", json=_canary_patch(2, **spec))
        assert answer.status_code == 200, answer.text
        running = wait_canary(plane, "hflaky", {"running"}, 60)
        ended = wait_canary(plane, "hflaky", {"rolled_back", "promoted"}, spec["interval_s"] + 5)
        time.sleep(2.0)
    assert ended["state"] == "rolled_back", ended
    revision = _canary_revision(plane, "hflaky")
    verdict = revision["verdict"]
    took = _at(verdict["at"]) - _at(running["step_started_at"])
    failed = failures(load.calls)
    time.sleep(2.5)  # the gateway's last report of the canary's calls
    calls, errors = _counted(plane, "hflaky", revision["revision"])
    print(f"\nthrough HAProxy: rolled back {took:.1f}s after the step started "
          f"({verdict['reason']}); {len(failed)} of {len(load.calls)} calls failed; HAProxy "
          f"counted {errors} errors in the canary's {calls} calls")  # fmt: skip
    assert took < spec["interval_s"], (took, verdict)
    assert all(c.status == 500 and "fails by design" in c.error for c in failed), failed
    assert errors == len(failed), (errors, len(failed))
    assert verdict["figures"]["error_rate"] > spec["max_error_rate"], verdict
    assert answered_by(load.between(_at(verdict["at"]) + SETTLE_S, time.time())).keys() == {1}
