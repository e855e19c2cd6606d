"""``python -m gateway --engine haproxy`` as a real process (HAProxy in front, the Python
forwarder behind it as the slow path) following a fake registry over HTTP: route changes
under load reload HAProxy without a failed call; a key goes native after its first call and
stops within a second of its revocation; a canary's calls are each counted from HAProxy's
log; the gateway killed with SIGKILL takes its HAProxy down."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.traffic import KeyGrant, Route, quantile
from tests.gateway.harness import (
    INFER,
    ControlPlane,
    FakeRegistry,
    Process,
    ThreadServer,
    fake_serving,
    free_port,
    haproxy_binary,
    lane,
    load,
    wait_until,
)

pytestmark = pytest.mark.system
GATEWAY_KEY = "mp_gateway_key"
READER = "mp_reader_key"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    haproxy_binary()
    return tmp_path_factory.mktemp("native")


@pytest.fixture(scope="module")
def servers(tmp: Path) -> Iterator[dict[str, Process]]:
    started = {"v7": fake_serving(tmp, 7), "v8": fake_serving(tmp, 8),
               "v9-fails": fake_serving(tmp, 9, fail_every=5)}  # fmt: skip
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def plane(servers: dict[str, Process]) -> ControlPlane:
    plane = ControlPlane(wait_s=2.0)
    plane.keys = {READER: KeyGrant(key_id="k-reader", name="reader", scopes=["read"])}
    plane.publish(route("d", lane(1, 7, "primary", 100, servers["v7"])), auth=True)
    return plane


@pytest.fixture(scope="module")
def registry(plane: ControlPlane) -> Iterator[str]:
    server = ThreadServer(FakeRegistry(plane, GATEWAY_KEY))
    yield server.url
    server.stop()


def start(registry: str, tmp: Path, name: str) -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--engine", "haproxy", "--registry-url", registry,
            "--port", str(port), "--report-s", "0.2", "--id", name, "--wait-s", "2"]  # fmt: skip
    return Process(argv, port, tmp / f"{name}.log", "/readyz", MODELPLANE_TOKEN=GATEWAY_KEY)


@pytest.fixture(scope="module")
def gateway(registry: str, tmp: Path) -> Iterator[Process]:
    native = start(registry, tmp, "native")
    yield native
    native.stop()


def route(name: str, *lanes: object) -> Route:
    return Route(deployment=name, model="m", lanes=list(lanes))  # type: ignore[arg-type]


def metric(gateway: Process, name: str) -> float:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def publish(plane: ControlPlane, gateway: Process, *routes: Route) -> None:
    """Publish and wait until HAProxy serves it (one more reload)."""
    reloads = metric(gateway, "modelplane_gateway_native_reloads_total")
    others = [r for r in plane.routes if r.deployment not in {n.deployment for n in routes}]
    plane.publish(*others, *routes)
    wait_until("HAProxy reloaded", lambda: metric(
        gateway, "modelplane_gateway_native_reloads_total") > reloads)  # fmt: skip


def test_a_key_goes_native_after_its_first_call_and_stops_within_a_second_of_revocation(
    plane: ControlPlane, gateway: Process
) -> None:
    reader = {"Authorization": f"Bearer {READER}"}
    url = f"{gateway.url}/serve/d/v2/models/m/infer"
    assert httpx.post(url, json=INFER).status_code == 401
    nope = {"Authorization": "Bearer mp_nope"}
    assert httpx.post(url, json=INFER, headers=nope).status_code == 401
    checks = plane.checks
    assert httpx.post(url, json=INFER, headers=reader).status_code == 200  # the slow path
    wait_until("key in HAProxy", lambda: metric(gateway, "modelplane_gateway_native_keys") == 1)
    native = metric(gateway, "modelplane_gateway_native_calls_total")
    answers = load(url, 200, headers=reader)
    assert Counter(a.status_code for a in answers) == {200: 200}
    assert plane.checks == checks + 1  # one check for that key, ever
    assert httpx.get(f"{gateway.url}/metrics").status_code == 200
    revoked = time.monotonic()
    plane.publish(revoked=["k-reader"])
    wait_until("revoked", lambda: httpx.post(url, json=INFER, headers=reader).status_code == 401,
               timeout=5)  # fmt: skip
    took = time.monotonic() - revoked
    assert took <= 1.0, took
    assert metric(gateway, "modelplane_gateway_native_keys") == 0
    assert metric(gateway, "modelplane_gateway_native_calls_total") >= native  # logs sampled
    plane.publish(revoked=[])
    plane.keys = {READER: KeyGrant(key_id="k-reader-2", name="reader", scopes=["read"])}


def test_route_changes_under_load_reload_haproxy_and_fail_no_call(
    servers: dict[str, Process], plane: ControlPlane, gateway: Process
) -> None:
    reader = {"Authorization": f"Bearer {READER}"}
    url = f"{gateway.url}/serve/moving/v2/models/m/infer"
    publish(plane, gateway, route("moving", lane(1, 7, "primary", 100, servers["v7"])))
    wait_until("key usable", lambda: httpx.post(url, json=INFER, headers=reader).status_code == 200)
    results: list[list[httpx.Response]] = []
    loader = threading.Thread(target=lambda: results.append(
        load(url, 3000, concurrency=8, headers=reader)))  # fmt: skip
    reloads = metric(gateway, "modelplane_gateway_native_reloads_total")
    loader.start()
    for share in (10, 30, 50, 70, 90, 70, 50, 30, 10, 0):
        plane.publish(route("moving", lane(1, 7, "primary", 100 - share, servers["v7"]),
                            lane(2, 8, "split", share, servers["v8"])))  # fmt: skip
        time.sleep(0.3)
    loader.join(120)
    [answers] = results
    assert Counter(a.status_code for a in answers) == {200: 3000}
    assert {a.json()["model_version"] for a in answers} == {"7", "8"}
    assert metric(gateway, "modelplane_gateway_native_reloads_total") >= reloads + 5


def test_a_canarys_calls_are_each_counted_from_haproxys_log(
    servers: dict[str, Process], plane: ControlPlane, gateway: Process
) -> None:
    reader = {"Authorization": f"Bearer {READER}"}
    url = f"{gateway.url}/serve/canaried/v2/models/m/infer"
    publish(plane, gateway, route("canaried", lane(1, 7, "primary", 50, servers["v7"]),
                                  lane(2, 9, "canary", 50, servers["v9-fails"])))  # fmt: skip
    wait_until("key usable", lambda: httpx.post(url, json=INFER, headers=reader).status_code
               in (200, 500))  # fmt: skip
    wait_until("key in HAProxy", lambda: metric(gateway, "modelplane_gateway_native_keys") == 1)
    time.sleep(0.6)  # the calls so far are reported
    plane.reports.clear()
    logged = metric(gateway, "modelplane_gateway_native_calls_total")
    answers = load(url, 400, headers=reader)
    failed = sum(a.status_code == 500 for a in answers)
    assert failed > 0 and {a.status_code for a in answers} == {200, 500}
    try:
        counted = wait_until("reported", lambda: (c := plane.counted("canaried"))
                             and sum(c[r]["calls"] for r in c) == 400 and c)  # fmt: skip
    except TimeoutError:
        pytest.fail(f"counted {plane.counted('canaried')}")
    served = Counter(a.json().get("model_version") for a in answers if a.status_code == 200)
    assert counted[1]["calls"] == served["7"] and counted[1]["errors"] == 0
    assert counted[2]["calls"] == served["9"] + failed and counted[2]["errors"] == failed
    for revision in (1, 2):  # each call's latency, as logged
        assert sum(counted[revision]["latency"]) == counted[revision]["calls"]
        assert quantile(counted[revision]["latency"], 0.99) is not None
    assert metric(gateway, "modelplane_gateway_native_calls_total") == logged + 400


def test_the_gateway_killed_takes_its_haproxy_down(registry: str, tmp: Path) -> None:
    doomed = start(registry, tmp, "doomed")
    assert httpx.get(f"{doomed.url}/healthz").status_code == 200
    doomed.kill()

    def refused() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", doomed.port)) != 0

    wait_until("HAProxy gone with its gateway", refused, timeout=5)
