"""``python -m gateway`` as real processes (both engines: the Python forwarder, HAProxy)
following a fake registry over HTTP (the three gateway endpoints of the control plane's
API): readiness, keys, revocation on two gateways within a second, reports, metrics."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.traffic import KeyGrant, Route
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
    wait_until,
)

pytestmark = pytest.mark.system
GATEWAY_KEY = "mp_gateway_key"
READER = "mp_reader_key"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    tmp = tmp_path_factory.mktemp("gateway-process")
    serving = fake_serving(tmp, 7)
    plane = ControlPlane(wait_s=2.0)
    plane.keys = {READER: KeyGrant(key_id="k-reader", name="reader", scopes=["read"])}
    plane.publish(Route(deployment="d", model="m", lanes=[lane(1, 7, "primary", 100, serving)]),
                  auth=True)  # fmt: skip
    plane.tmp = tmp  # type: ignore[attr-defined]
    yield plane
    serving.stop()


@pytest.fixture(scope="module")
def registry(plane: ControlPlane) -> Iterator[str]:
    server = ThreadServer(FakeRegistry(plane, GATEWAY_KEY))
    yield server.url
    server.stop()


def start_gateway(registry: str, tmp: Path, name: str, engine: str = "python") -> Process:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--registry-url", registry, "--port", str(port),
            "--report-s", "0.2", "--id", name, "--wait-s", "2", "--engine", engine]  # fmt: skip
    return Process(argv, port, tmp / f"{name}.log", "/readyz", MODELPLANE_TOKEN=GATEWAY_KEY)


@pytest.fixture(scope="module", params=["python", "haproxy"])
def gateways(
    plane: ControlPlane, registry: str, request: pytest.FixtureRequest
) -> Iterator[list[Process]]:
    if request.param == "haproxy":
        haproxy_binary()
    started = [start_gateway(registry, plane.tmp, f"g{i}", request.param) for i in (1, 2)]  # type: ignore[attr-defined]
    yield started
    for gateway in started:
        gateway.stop()


def test_a_key_works_on_every_gateway_and_its_revocation_stops_it_within_a_second(
    plane: ControlPlane, gateways: list[Process]
) -> None:
    reader = {"Authorization": f"Bearer {READER}"}
    for g in gateways:
        assert httpx.get(f"{g.url}/healthz").status_code == 200
        answer = httpx.post(f"{g.url}/serve/d/v2/models/m/infer", json=INFER, headers=reader)
        assert answer.status_code == 200 and answer.json()["model_version"] == "7"
        anon = httpx.post(f"{g.url}/serve/d/v2/models/m/infer", json=INFER)
        assert anon.status_code == 401 and anon.headers["www-authenticate"] == "Bearer"
    revoked = time.monotonic()
    key_id = plane.keys[READER].key_id
    assert key_id is not None
    plane.publish(revoked=[key_id])
    stopped = []
    for g in gateways:
        wait_until("revoked", lambda g=g: httpx.post(
            f"{g.url}/serve/d/v2/models/m/infer", json=INFER, headers=reader
        ).status_code == 401, timeout=5)  # fmt: skip
        stopped.append(time.monotonic() - revoked)
    assert max(stopped) <= 1.0, stopped
    plane.publish(revoked=[])
    plane.keys = {READER: KeyGrant(key_id=f"{key_id}+", name="reader", scopes=["read"])}


def test_reports_carry_each_gateways_counts(plane: ControlPlane, gateways: list[Process]) -> None:
    reader = {"Authorization": f"Bearer {READER}"}
    wait_until("key usable", lambda: httpx.post(
        f"{gateways[0].url}/serve/d/v2/models/m/infer", json=INFER, headers=reader
    ).status_code == 200)  # fmt: skip
    time.sleep(0.6)  # that call's report went
    plane.reports.clear()
    for g in gateways:
        with httpx.Client() as client:
            for _ in range(50):
                url = f"{g.url}/serve/d/v2/models/m/infer"
                assert client.post(url, json=INFER, headers=reader).status_code == 200

    def by_gateway() -> dict[str, int]:
        out: dict[str, int] = {}
        for report in list(plane.reports):
            for c in report.counts:
                out[report.gateway] = out.get(report.gateway, 0) + c.calls
        return out

    try:
        wait_until("reports", lambda: by_gateway() == {"g1": 50, "g2": 50}, timeout=10)
    except TimeoutError:
        pytest.fail(f"reports: {by_gateway()}")
    report = plane.reports[0]
    assert report.started_at <= report.ended_at and report.counts[0].revision == 1
    metrics = httpx.get(f"{gateways[0].url}/metrics").text
    assert 'modelplane_gateway_calls_total{deployment="d",revision="1"}' in metrics
    assert "modelplane_gateway_feed_age_seconds" in metrics
    assert "modelplane_gateway_key_cache_size 1.0" in metrics


def test_a_gateway_without_a_feed_is_not_ready(plane: ControlPlane) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--registry-url", f"http://127.0.0.1:{free_port()}",
            "--port", str(port)]  # fmt: skip
    g = Process(argv, port, plane.tmp / "unfed.log", "/healthz")  # type: ignore[attr-defined]
    try:
        assert httpx.get(f"{g.url}/readyz").status_code == 503
    finally:
        g.stop()


def test_workers_share_one_port_and_report_each_as_its_own(
    plane: ControlPlane, registry: str
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "--registry-url", registry, "--port", str(port),
            "--report-s", "0.2", "--id", "multi", "--wait-s", "2", "--workers", "2"]  # fmt: skip
    g = Process(argv, port, plane.tmp / "multi.log", "/readyz", MODELPLANE_TOKEN=GATEWAY_KEY)  # type: ignore[attr-defined]
    try:
        reader = {"Authorization": f"Bearer {READER}"}
        plane.reports.clear()
        for _ in range(40):  # a new connection each: the kernel spreads them
            answer = httpx.post(f"{g.url}/serve/d/v2/models/m/infer", json=INFER, headers=reader)
            assert answer.status_code == 200

        def reporters() -> set[str]:
            return {r.gateway for r in list(plane.reports) if r.counts}

        assert wait_until("both report", lambda: reporters() == {"multi/w0", "multi/w1"})
    finally:
        g.stop()
    assert g.proc.returncode == 0
