"""The gateway over real HTTP, both engines: the Python forwarder in process (the control
plane's side played by in-test callables, the interface the embedded control plane fills),
and ``python -m gateway --engine haproxy`` (HAProxy, the slow path behind it) following the
same callables over HTTP. Fake serving processes behind both; every test runs on each."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.traffic import KeyGrant, Route
from gateway.app import Gateway
from gateway.server import GatewayApp
from tests.gateway.harness import (
    INFER,
    ControlPlane,
    FakeRegistry,
    Process,
    ThreadServer,
    fake_serving,
    free_port,
    haproxy_binary,
    load,
    wait_until,
)
from tests.gateway.harness import lane as lane_of

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Process]]:
    tmp = tmp_path_factory.mktemp("serving")
    started = {
        "v7": fake_serving(tmp, 7),
        "v8": fake_serving(tmp, 8),
        "v9+1": fake_serving(tmp, 9, add=1),
        "v10-fails": fake_serving(tmp, 10, fail_every=4),
    }
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module", params=["python", "haproxy"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "haproxy":
        haproxy_binary()
    return str(request.param)


@pytest.fixture(scope="module")
def plane(engine: str) -> ControlPlane:
    return ControlPlane(wait_s=2.0)  # one per engine: the counts start from zero


@pytest.fixture(scope="module")
def gateway(
    engine: str, plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if engine == "python":
        gw = Gateway(fetch=plane.fetch, verifier=plane.verify, reporter=plane.report,
                     gateway_id="in-test", report_s=0.2)  # fmt: skip
        server = ThreadServer(GatewayApp(gw))
        yield server.url
        server.stop()
        return
    registry = ThreadServer(FakeRegistry(plane, "mp_gateway"))
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--engine", "haproxy", "--registry-url",
            registry.url, "--port", str(port), "--report-s", "0.2", "--wait-s", "2",
            "--id", "native"]  # fmt: skip
    log = tmp_path_factory.mktemp("native") / "gateway.log"
    native = Process(argv, port, log, "/readyz", MODELPLANE_TOKEN="mp_gateway")
    yield native.url
    native.stop()
    registry.stop()


def route(name: str, *lanes: object) -> Route:
    return Route(deployment=name, model="m", lanes=list(lanes))  # type: ignore[arg-type]


def publish(plane: ControlPlane, gateway: str, new: Route) -> None:
    plane.publish(*[r for r in plane.routes if r.deployment != new.deployment], new)
    wait_until("route applied", lambda: httpx.get(
        f"{gateway}/serve/{new.deployment}/v2/health/live").status_code == 200)  # fmt: skip


def test_a_90_10_split_within_3_points_over_2000_calls_and_reported(
    servers: dict[str, Process], plane: ControlPlane, gateway: str, engine: str
) -> None:
    publish(plane, gateway, route("split", lane_of(1, 7, "primary", 90, servers["v7"]),
                                  lane_of(2, 8, "split", 10, servers["v8"])))  # fmt: skip
    answers = load(f"{gateway}/serve/split/v2/models/m/infer", 2000)
    assert {a.status_code for a in answers} == {200}
    seen = Counter(a.json()["model_version"] for a in answers)
    assert abs(seen["8"] / 2000 * 100 - 10) <= 3, seen
    counted = wait_until(
        "reported", lambda: (c := plane.counted("split")) and
        sum(c[r]["calls"] for r in c) == 2000 and c)  # fmt: skip
    assert counted[1]["calls"] == seen["7"] and counted[2]["calls"] == seen["8"]
    assert counted[1]["errors"] == counted[2]["errors"] == 0
    if engine == "python":
        assert sum(counted[1]["latency"]) == seen["7"]
    else:  # HAProxy logs one call in SAMPLE for the latency (and weighs it SAMPLE)
        assert 0 < sum(counted[1]["latency"]) <= seen["7"] * 3


def test_pinned_and_version_addressed_calls_reach_only_their_version(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    publish(plane, gateway, route("pins", lane_of(1, 7, "primary", 90, servers["v7"]),
                                  lane_of(2, 8, "split", 10, servers["v8"])))  # fmt: skip
    base = f"{gateway}/serve/pins"
    by_header = load(f"{base}/v2/models/m/infer", 100, headers={"Modelplane-Version": "8"})
    by_path = load(f"{base}/v2/models/m/versions/8/infer", 100)
    for answers in (by_header, by_path):
        assert {(a.status_code, a.json()["model_version"]) for a in answers} == {(200, "8")}
    assert httpx.get(f"{base}/v2/models/m/versions/7").json()["model_version"] == "7"
    missing = httpx.post(f"{base}/v2/models/m/versions/5/infer", json=INFER)
    assert missing.status_code == 404
    assert missing.json() == {"error": "deployment 'pins' serves no version 5; it serves 7, 8"}
    bad = httpx.post(f"{base}/v2/models/m/infer", json=INFER, headers={"Modelplane-Version": "x"})
    assert bad.status_code == 400


def test_shadow_answers_never_reach_the_caller_and_disagreements_are_counted(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    publish(plane, gateway, route("shadowed", lane_of(1, 7, "primary", 100, servers["v7"]),
                                  lane_of(3, 9, "shadow", 100, servers["v9+1"])))  # fmt: skip
    answers = load(f"{gateway}/serve/shadowed/v2/models/m/infer", 300)
    for a in answers:
        assert a.status_code == 200 and a.json()["model_version"] == "7"
        assert a.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    counted = wait_until("shadow reported", lambda: (c := plane.counted("shadowed").get(3))
                         and c["shadow_calls"] + c["shadow_dropped"] == 300 and c)  # fmt: skip
    mirrored = counted["shadow_calls"]
    assert mirrored > 0 and counted["calls"] == mirrored and counted["shadow_errors"] == 0
    assert counted["shadow_compared"] == counted["shadow_disagreements"] == mirrored
    assert plane.counted("shadowed")[1]["calls"] == 300


def test_a_shadow_that_agrees_counts_no_disagreement(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    publish(plane, gateway, route("agreeing", lane_of(1, 9, "primary", 100, servers["v9+1"]),
                                  lane_of(3, 9, "shadow", 50, servers["v9+1"])))  # fmt: skip
    load(f"{gateway}/serve/agreeing/v2/models/m/infer", 200)
    counted = wait_until("reported", lambda: (c := plane.counted("agreeing").get(3))
                         and c["shadow_compared"] > 20 and c)  # fmt: skip
    assert counted["shadow_disagreements"] == 0


def test_errors_are_counted_per_revision(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    publish(plane, gateway, route("failing", lane_of(4, 10, "primary", 100,
                                                     servers["v10-fails"])))  # fmt: skip
    answers = load(f"{gateway}/serve/failing/v2/models/m/infer", 200)
    failed = sum(a.status_code == 500 for a in answers)
    assert failed == 50
    counted = wait_until("reported", lambda: (c := plane.counted("failing").get(4))
                         and c["calls"] == 200 and c)  # fmt: skip
    assert counted["errors"] == 50


def test_unknown_deployment_404_and_no_endpoint_503(plane: ControlPlane, gateway: str) -> None:
    publish(plane, gateway, route("empty", lane_of(1, 7, "primary", 100)))
    ghost = httpx.post(f"{gateway}/serve/ghost/v2/models/m/infer", json=INFER)
    assert ghost.status_code == 404 and "ghost" in ghost.json()["error"]
    empty = httpx.post(f"{gateway}/serve/empty/v2/models/m/infer", json=INFER)
    assert empty.status_code == 503 and empty.headers["retry-after"] == "1"


def test_keys_when_the_feed_turns_auth_on(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    plane.keys = {
        "mp_reader": KeyGrant(key_id="r", name="reader", scopes=["read"]),
        "mp_worker": KeyGrant(key_id="w", name="worker", scopes=["worker"]),
        "mp_other": KeyGrant(key_id="o", name="other", scopes=["read"], model_globs=["x-*"]),
    }
    plane.publish(route("keyed", lane_of(1, 7, "primary", 100, servers["v7"])), auth=True)
    url = f"{gateway}/serve/keyed/v2/models/m/infer"
    try:
        anon = wait_until("auth on", lambda: (r := httpx.post(url, json=INFER)).status_code
                          == 401 and r)  # fmt: skip
        assert anon.headers["www-authenticate"] == "Bearer" and "error" in anon.json()
        for token, status in (("mp_reader", 200), ("mp_worker", 403), ("mp_other", 403),
                              ("mp_nope", 401)):  # fmt: skip
            answer = httpx.post(url, json=INFER, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == status, (token, answer.text)
        checks = plane.checks
        load(url, 200, headers={"Authorization": "Bearer mp_reader"})
        assert plane.checks == checks  # no check per call
    finally:
        plane.publish(auth=False)


def test_event_streams_go_through_chunk_by_chunk_and_large_bodies_both_ways(
    servers: dict[str, Process], plane: ControlPlane, gateway: str
) -> None:
    publish(plane, gateway, route("streams", lane_of(1, 7, "primary", 100, servers["v7"])))
    arrived = []
    with httpx.stream("GET", f"{gateway}/serve/streams/stream") as answer:
        started = time.monotonic()
        for line in answer.iter_lines():
            if line:
                arrived.append((line, time.monotonic() - started))
    assert [line for line, _ in arrived] == [f"data: {i}" for i in range(5)]
    # sent 0.2 s apart: the first came well before the last (a loaded machine may bunch
    # two of them; a buffered answer would bring all five at once)
    assert arrived[0][1] < 0.5 and arrived[-1][1] - arrived[0][1] > 0.4
    payload = bytes(range(256)) * (3 * 2**20 // 256)  # 3 MiB in (streamed), 9 MiB out
    big = httpx.post(f"{gateway}/serve/streams/big", content=payload, timeout=60)
    assert big.status_code == 200 and big.content == payload * 3
    small = bytes(range(256)) * 2048  # held whole in (512 KiB), streamed out (1.5 MiB)
    assert httpx.post(f"{gateway}/serve/streams/big", content=small).content == small * 3


def test_kill_9_of_one_endpoint_under_load_loses_no_call(
    tmp_path: Path, plane: ControlPlane, gateway: str, engine: str
) -> None:
    """The Python forwarder retries every call the dead endpoint dropped. HAProxy 2.6 retries
    those it could not connect for, but answers a call the endpoint died holding by closing
    the caller's connection without an answer (the HTTP signal that it was not processed and
    may be sent again; haproxy#1423, #2375): at most one per connection then, and none
    after it marked the endpoint down at its first error."""
    a, b = fake_serving(tmp_path, 7), fake_serving(tmp_path, 7)
    outcomes: Counter[object] = Counter()
    lock = threading.Lock()

    def caller() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(375):
                try:
                    status: object = client.post(
                        f"{gateway}/serve/sturdy/v2/models/m/infer", json=INFER
                    ).status_code
                except httpx.RemoteProtocolError:
                    status = "closed without an answer"
                with lock:
                    outcomes[status] += 1

    try:
        publish(plane, gateway, route("sturdy", lane_of(1, 7, "primary", 100, a, b)))
        callers = [threading.Thread(target=caller) for _ in range(8)]
        for thread in callers:
            thread.start()
        time.sleep(0.5)
        a.kill()
        for thread in callers:
            thread.join(120)
        assert outcomes[200] + outcomes["closed without an answer"] == 3000, outcomes
        if engine == "python":
            assert outcomes[200] == 3000
        else:
            assert outcomes["closed without an answer"] <= 8, outcomes
    finally:
        a.kill()
        b.stop()
