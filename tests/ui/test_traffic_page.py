"""The deployment page's traffic in headless Chromium against a real control plane: charts
drawn from the gateways' counts (posted as a gateway would), the canary's step, share and
verdict with its figures beside its base's, and Promote clicked through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contract.traffic import BUCKETS, RevisionCounts, TrafficReport, bucket
from tests.ui.conftest import Dashboard, screenshot
from tests.ui.test_dashboard import LIVE_TIMEOUT_MS, wait_until

OPTIMIZATION = {
    "requested": "int8_dynamic",
    "applied": "int8_dynamic",
    "passed": True,
    "examples": 4,
    "max_abs_error": 0.0021,
    "top1_agreement": 1.0,
    "size_bytes_before": 4_000_000,
    "size_bytes_after": 1_100_000,
    "latency_ms_before": 2.4,
    "latency_ms_after": 1.3,
}


class Worker:
    """Plays a deployer worker and its serving processes over the API: every replica
    assigned to it turns ready with an endpoint at once."""

    def __init__(self, dashboard: Dashboard, name: str) -> None:
        self.d = dashboard
        body = {"name": name, "host": "h", "address": "127.0.0.1", "cpu_slots": 8}
        self.id = dashboard.send("POST", "/workers", 201, json=body)["id"]
        self.ready: set[str] = set()

    def serve(self) -> None:
        report = {"replicas": [{"replica_id": r, "state": "ready"} for r in self.ready]}
        out = self.d.send("POST", f"/workers/{self.id}/heartbeat", json=report)
        for a in out["assignments"]:
            if a["desired"] != "run" or a["replica_id"] in self.ready:
                continue
            endpoint = {
                "url": f"http://127.0.0.1:9/{a['replica_id'][:8]}",
                "replica_id": a["replica_id"],
                "status": "ready",
                "optimization": OPTIMIZATION,
            }
            self.d.send("POST", "/endpoints", 201, json=endpoint)
            self.ready.add(a["replica_id"])
        report = {"replicas": [{"replica_id": r, "state": "ready"} for r in self.ready]}
        self.d.send("POST", f"/workers/{self.id}/heartbeat", json=report)


@pytest.fixture(scope="module")
def worker(dashboard: Dashboard) -> Worker:
    return Worker(dashboard, "ui-traffic")


@pytest.fixture(scope="module")
def gateway_token(dashboard: Dashboard) -> str:
    body = {"name": "ui-gateway", "scopes": ["gateway"]}
    token: str = dashboard.send("POST", "/keys", 201, json=body)["token"]
    return token


def counts(deployment: str, revision: int, calls: int, errors: int, ms: float) -> RevisionCounts:
    latency = [0] * BUCKETS
    latency[bucket(ms)] = calls
    return RevisionCounts(
        deployment=deployment, revision=revision, calls=calls, errors=errors, latency=latency
    )


def report(dashboard: Dashboard, token: str, *revisions: RevisionCounts) -> None:
    """What a gateway sends after a few seconds of calls."""
    now = datetime.now(UTC)
    body = TrafficReport(
        gateway="ui-test", started_at=now - timedelta(seconds=5), ended_at=now, counts=[*revisions]
    )
    response = dashboard.api.post(
        "/gateway/reports",
        content=body.model_dump_json(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code in (200, 202, 204), response.text


def canary_on(
    dashboard: Dashboard, worker: Worker, name: str, canary: dict[str, Any]
) -> dict[str, Any]:
    """A deployment of resnet v1 serving, then v2 as a canary, its replica ready."""
    body = {"name": name, "model": "resnet", "version": 1, "gpus": 0}
    dashboard.send("POST", "/deployments", 201, json=body)
    worker.serve()
    update = {"version": 2, "strategy": {"canary": canary}}
    dashboard.send("PATCH", f"/deployments/{name}", json=update)

    def running() -> dict[str, Any] | None:
        worker.serve()
        d: dict[str, Any] = dashboard.get(f"/deployments/{name}")
        return d if d["canary"] and d["canary"]["state"] == "running" else None

    found: dict[str, Any] = wait_until(f"{name}'s canary running", running, 30)
    return found


def test_charts_and_the_canary_panel_then_promote(
    dashboard: Dashboard, worker: Worker, gateway_token: str, page: Any
) -> None:
    name = "resnet-canary"
    spec = {"steps": [10, 50, 100], "interval_s": 3600, "min_calls": 50, "max_p99_ms": 250}
    d = canary_on(dashboard, worker, name, spec)
    base, canary = d["canary"]["base_revision"], d["canary"]["revision"]
    for _ in range(3):
        report(
            dashboard,
            gateway_token,
            counts(name, base, 900, 2, 12.0),
            counts(name, canary, 100, 1, 15.0),
        )
    page.goto(f"{dashboard.ui}/deployments")
    listed = page.locator(f'#deployments tr[data-deployment="{name}"] td.traffic')
    listed.locator('[data-canary="running"]').wait_for()
    assert "v1 90%" in listed.inner_text() and "v2 10% canary" in listed.inner_text()
    page.goto(f"{dashboard.ui}/deployments/{name}")

    panel = page.locator("#canary-panel")
    panel.wait_for()
    assert page.locator("#canary-state [data-status]").inner_text() == "running"
    assert page.locator("#canary-step").inner_text() == "1 of 3 (10%)"
    assert page.locator("#canary-share").inner_text() == "10%"
    assert (
        page.locator('svg.steps .step[data-current="true"]').get_attribute("data-percent") == "10"
    )
    lanes = page.locator("svg.share .lane")
    shares = lanes.evaluate_all("ls => ls.map(l => [l.dataset.role, Number(l.dataset.percent)])")
    assert sorted(shares) == [["canary", 10], ["primary", 90]]

    for chart in ("chart-calls", "chart-errors", "chart-latency"):
        series = page.locator(f"#{chart} g.series")

        def drawn(series: Any = series) -> bool:  # redrawn every 5 s from /traffic
            points = series.evaluate_all(
                "gs => gs.map(g => [Number(g.dataset.revision), Number(g.dataset.points)])"
            )
            return {r for r, n in points if n > 0} == {base, canary}

        wait_until(f"{chart} drawn for both revisions", drawn, LIVE_TIMEOUT_MS / 1000)
        assert page.locator(f"#{chart} polyline, #{chart} circle").count() >= 2
    rates = page.locator("#chart-calls g.series").evaluate_all(
        "gs => Object.fromEntries(gs.map(g => [g.dataset.revision, Number(g.dataset.peak)]))"
    )  # the peak: the newest bucket may already be one past the reports, at 0 calls/s
    assert rates[str(base)] > rates[str(canary)] > 0  # 900 calls a report against 100
    screenshot(page, "deployment-canary-running")

    page.locator("#canary-promote").click()
    page.locator('#canary-state [data-status="promoted"]').wait_for(timeout=LIVE_TIMEOUT_MS)
    after = dashboard.get(f"/deployments/{name}")
    assert after["canary"]["state"] == "promoted" and after["version"] == 2
    assert page.locator("#canary-promote").is_disabled()
    assert page.locator("#canary-abort").is_disabled()
    row = page.locator(f'#revisions tr[data-revision="{canary}"]')
    row.locator('.verdict-cell [data-status="promoted"]').wait_for(timeout=LIVE_TIMEOUT_MS)
    assert "int8_dynamic" in row.locator(".optimisation-cell").inner_text()
    assert "3.81 MiB → 1.05 MiB" in row.locator(".optimisation-cell").inner_text()
    screenshot(page, "deployment-canary-promoted")


def test_a_breaching_canary_shows_its_verdict_and_the_worse_figure_in_red(
    dashboard: Dashboard, worker: Worker, gateway_token: str, page: Any
) -> None:
    name = "resnet-bad-canary"
    spec = {"steps": [20, 100], "interval_s": 2, "min_calls": 50, "max_error_rate": 0.05}
    d = canary_on(dashboard, worker, name, spec)
    base, canary = d["canary"]["base_revision"], d["canary"]["revision"]

    def rolled_back() -> bool:
        report(
            dashboard,
            gateway_token,
            counts(name, base, 400, 0, 10.0),
            counts(name, canary, 100, 30, 11.0),
        )
        state: str = dashboard.get(f"/deployments/{name}")["canary"]["state"]
        return state == "rolled_back"

    wait_until(f"{name}'s canary rolled back", rolled_back, 30)
    page.goto(f"{dashboard.ui}/deployments/{name}")
    page.locator('#canary-state [data-status="rolled_back"]').wait_for()
    assert "error rate" in page.locator("#canary-verdict").inner_text()
    errors = page.locator('svg.compare .figure[data-figure="error_rate"]')
    assert errors.get_attribute("data-worse") == "true"
    assert float(errors.locator(".bar.canary").get_attribute("data-value") or 0) > 0.2
    assert page.locator("#canary-promote").is_disabled()
    row = page.locator(f'#revisions tr[data-revision="{canary}"]')
    assert row.locator('.verdict-cell [data-status="rolled_back"]').count() == 1
    screenshot(page, "deployment-canary-rolled-back")
