"""Two ``python -m gateway`` processes (each engine in turn: the Python forwarder, HAProxy)
in front of a real platform (a control plane on Postgres with auth on, one deployer worker,
a served model): calls go through both; a key revoked through the API stops working on both
within a second (measured); a gateway killed with SIGKILL under load leaves the other
answering every call (the client, like a balancer, sends a call the dead gateway refused to
the other); what the gateways counted reaches the control plane's traffic series."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.harness import SIGNATURE, auth, push_version, torchscript_bytes
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.deploy_helpers import api, infer_json, wait_serving
from tests.gateway.harness import Process, free_port, haproxy_binary

pytestmark = pytest.mark.timeout(240)
NAME = "gwproc"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
REVOCATION_BOUND_S = 1.0  # the README's security section states it


@pytest.fixture(scope="module")
def platform(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    with running_platform(seaweed, tmp_path_factory, {"w3": 1}) as plane:
        weights = torchscript_bytes(1.0, tmp_path_factory.mktemp("gw") / "m.pt")
        push_version(
            plane.cp.url, NAME, {"model.pt": weights}, "torchscript", plane.token,
            signature=SIGNATURE,
        )  # fmt: skip
        body = {"name": NAME, "model": NAME, "version": 1, "replicas": 1}
        assert api(plane, "POST", "/deployments", json=body).status_code == 201
        wait_serving(plane, NAME, 1, timeout=90)
        yield plane


def key(plane: Platform, name: str, scope: str) -> dict[str, Any]:
    name = f"{name}-{uuid.uuid4().hex[:6]}"  # each engine's run makes its own
    answer = api(plane, "POST", "/keys", json={"name": name, "scopes": [scope]})
    assert answer.status_code == 201, answer.text
    out: dict[str, Any] = answer.json()
    return out


@pytest.fixture(scope="module", params=["python", "haproxy"])
def gateways(platform: Platform, request: pytest.FixtureRequest) -> Iterator[list[Process]]:
    engine = request.param
    if engine == "haproxy":
        haproxy_binary()
    token = key(platform, f"gateways-{engine}", "gateway")["token"]
    started = []
    try:
        for name in ("g1", "g2"):
            port = free_port()
            argv = [sys.executable, "-m", "gateway", "--registry-url", platform.cp.url,
                    "--port", str(port), "--id", name, "--report-s", "0.5",
                    "--engine", engine]  # fmt: skip
            log = Path(platform.log_dir) / f"gateway-{engine}-{name}.log"
            started.append(Process(argv, port, log, "/readyz", MODELPLANE_GATEWAY_TOKEN=token))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def infer(client: httpx.Client, gateway: Process, token: str) -> httpx.Response:
    return client.post(
        f"{gateway.url}/serve/{NAME}/v2/models/{NAME}/infer",
        json=BODY,
        headers={"Authorization": f"Bearer {token}"},
    )


def test_calls_pass_both_gateways_and_a_revoked_key_stops_on_both_within_a_second(
    platform: Platform, gateways: list[Process]
) -> None:
    caller = key(platform, "caller", "read")
    for gateway in gateways:
        url = f"{gateway.url}/serve/{NAME}"
        assert infer_json(url, NAME, caller["token"]) == [2.0, 3.0, 4.0, 5.0]
        anonymous = httpx.post(f"{url}/v2/models/{NAME}/infer", json=BODY)
        assert anonymous.status_code == 401
    refused_at: dict[str, float] = {}
    revoking = threading.Event()

    def watch(gateway: Process, name: str) -> None:
        with httpx.Client(timeout=5) as client:
            revoking.wait(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                status = infer(client, gateway, caller["token"]).status_code
                if status == 401:
                    refused_at[name] = time.monotonic()
                    return
                assert status == 200, status
                time.sleep(0.005)  # a 5 ms resolution, leaving the CPU to the processes

    watchers = [
        threading.Thread(target=watch, args=(g, f"g{i}")) for i, g in enumerate(gateways, 1)
    ]
    for thread in watchers:
        thread.start()
    with httpx.Client(base_url=platform.cp.api, headers=auth(platform.token)) as admin:
        admin.get("/keys", params={"limit": 1})  # a kept-alive connection, ready
        sent = time.monotonic()
        revoking.set()
        revoked = admin.post(f"/keys/{caller['id']}/revoke")
        answered = time.monotonic()  # the revocation was committed before its answer
    assert revoked.status_code == 200, revoked.text
    for thread in watchers:
        thread.join(15)
    after = {name: round(at - answered, 3) for name, at in refused_at.items()}
    print(f"revoke answered in {answered - sent:.3f} s; refused on each gateway after {after} s")
    assert set(after) == {"g1", "g2"}, after
    assert max(after.values()) <= REVOCATION_BOUND_S, after


def test_one_gateway_killed_under_load_the_other_keeps_answering(
    platform: Platform, gateways: list[Process]
) -> None:
    token = key(platform, "load", "read")["token"]
    g1, g2 = gateways
    dead = threading.Event()
    answered: dict[str, int] = {"g1": 0, "g2": 0, "after": 0, "rerouted": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client_loop(stop_at: float) -> None:
        with httpx.Client(timeout=10) as client:
            turn = 0
            while time.monotonic() < stop_at:
                turn += 1
                first, other = (g1, g2) if turn % 2 else (g2, g1)
                try:
                    answer, used = infer(client, first, token), first
                except httpx.TransportError:  # the dead one: refused, or dropped mid-call
                    with lock:
                        answered["rerouted"] += 1
                    answer, used = infer(client, other, token), other
                with lock:
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    else:
                        answered["g1" if used is g1 else "g2"] += 1
                        answered["after"] += dead.is_set()

    stop_at = time.monotonic() + 8
    threads = [threading.Thread(target=client_loop, args=(stop_at,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    g1.kill()  # SIGKILL
    dead.set()
    for thread in threads:
        thread.join(30)
    print(f"calls answered: {answered}")
    assert failures == [], failures[:5]
    assert answered["after"] > 50 and answered["rerouted"] > 0, answered

    # what the surviving gateway counted reaches the control plane
    def counted() -> bool:
        series = api(platform, "GET", f"/deployments/{NAME}/traffic?minutes=5&bucket_s=5")
        revisions = series.json()["revisions"]
        return any(p["calls_per_s"] > 0 for r in revisions for p in r["points"])

    deadline = time.monotonic() + 10
    while not counted():
        assert time.monotonic() < deadline, "no traffic counted in /traffic"
        time.sleep(0.2)
