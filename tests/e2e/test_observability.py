"""Observability end to end: one request id followed from the API call through the worker
to the serving process, /metrics on every process, multiprocess metrics, `modelplane gc`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import (
    REPO,
    SIGNATURE,
    ControlPlane,
    auth,
    base_env,
    push_version,
    torch_export_bytes,
    torchscript_bytes,
    wait_for,
)
from tests.e2e.conftest import Platform
from tests.e2e.deploy_helpers import api, infer_json, ready_endpoints, wait_serving

pytestmark = pytest.mark.timeout(180)


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def traced_call(plane: Platform, method: str, path: str, rid: str, **kw: Any) -> httpx.Response:
    """An API call with a key and our own request id."""
    headers = {**auth(plane.token), "X-Request-ID": rid}
    return httpx.request(method, f"{plane.cp.api}{path}", timeout=10, headers=headers, **kw)


def json_lines(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def serving_logs(plane: Platform) -> list[Path]:
    return [p for w in plane.workers.values() for p in (w.cache_dir / "logs").glob("*.log")]


def test_a_rollouts_request_id_reaches_worker_and_serving_logs(
    plane: Platform, tmp_path: Path
) -> None:
    name = "traced"
    v1 = torchscript_bytes(1.0, tmp_path / "traced-1.pt")
    push_version(
        plane.cp.url, name, {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    v2 = torch_export_bytes(2.0, tmp_path / "traced-2.pt2")
    push_version(plane.cp.url, name, {"model.pt2": v2}, "torch_export", plane.token)
    first, rollout = f"deploy-{uuid.uuid4().hex}", f"rollout-{uuid.uuid4().hex}"

    body = {"name": name, "model": name, "version": 1, "replicas": 1}
    created = traced_call(plane, "POST", "/deployments", first, json=body)
    assert created.status_code == 201 and created.headers["x-request-id"] == first
    wait_serving(plane, name, 1)
    patched = traced_call(plane, "PATCH", f"/deployments/{name}", rollout, json={"version": 2})
    assert patched.status_code == 200, patched.text
    wait_serving(plane, name, 2)
    wait_for("the old endpoint gone", lambda: not ready_endpoints(plane, name, 1), 30, plane.logs)

    def traced(paths: list[Path], rid: str) -> list[dict[str, Any]]:
        return [r for r in json_lines(paths) if r.get("request_id") == rid]

    workers = [w.log_path for w in plane.workers.values()]
    worker_lines = wait_for(
        "the rollout's drain in the worker logs",
        lambda: (
            (lines := traced(workers, rollout))
            and any("SIGTERM" in r["message"] for r in lines)
            and lines
        ),
        30,
        plane.logs,
    )
    said = " | ".join(r["message"] for r in worker_lines)
    assert "pulled" in said and "started" in said, said  # the new replica...
    assert all(r["process"] == "deployer" for r in worker_lines)
    serving = traced(serving_logs(plane), rollout)
    assert serving and {r["process"] for r in serving} == {"serving"}, serving_logs(plane)
    assert any(r["message"].startswith("serving traced version 2") for r in serving)
    assert traced(workers, first)  # the first deployment's actions carry its own id

    revisions = api(plane, "GET", f"/deployments/{name}/revisions").json()["items"]
    assert {r["revision"]: r["request_id"] for r in revisions} == {1: first, 2: rollout}
    events = api(plane, "GET", "/events", params={"limit": 1000}).json()["items"]
    tagged = {e["action"] for e in events if e["request_id"] == rollout}
    # the API call, and the new serving process announcing itself under the same id
    assert {"deployment.revision_created", "endpoint.registered"} <= tagged, tagged


def test_every_process_serves_metrics(plane: Platform, tmp_path: Path) -> None:
    name = "metered"
    v1 = torchscript_bytes(1.0, tmp_path / "metered-1.pt")
    push_version(
        plane.cp.url, name, {"model.pt": v1}, "torchscript", plane.token, signature=SIGNATURE
    )
    body = {"name": name, "model": name, "version": 1, "replicas": 1}
    assert api(plane, "POST", "/deployments", json=body).status_code == 201
    wait_serving(plane, name, 1)
    for _ in range(3):
        assert infer_json(f"{plane.cp.url}/serve/{name}", name, plane.token) == [2.0, 3.0, 4.0, 5.0]

    cp = samples(f"{plane.cp.url}/metrics")
    count = "modelplane_http_request_duration_seconds_count"
    assert value(cp, count, method="POST", route="/api/v1/deployments", status="201") >= 1
    assert value(cp, count, method="POST", route="/serve/{deployment}", status="200") >= 3
    assert value(cp, "modelplane_replicas", state="ready") >= 1
    assert value(cp, "modelplane_database_up") == 1
    assert value(cp, "modelplane_upload_bytes_total", kind="proxied") >= len(v1)

    [endpoint] = ready_endpoints(plane, name, 1)
    serving = samples(f"{endpoint['url']}/metrics")
    assert sum(
        v for (n, labels), v in serving.items()
        if n == "modelplane_inference_requests_total" and ("model", name) in labels
    ) >= 3  # fmt: skip
    assert value(serving, "modelplane_serving_ready", model=name, version="1") == 1
    assert value(serving, "process_resident_memory_bytes") > 0
    assert value(cp, "process_resident_memory_bytes") > 0

    pulled = 0.0
    for worker in plane.workers.values():
        if worker.process.poll() is not None:
            continue  # killed by an earlier test
        found = re.findall(r"metrics on (http://[^\s\"]+)", worker.log_path.read_text())
        assert found, worker.log()
        metrics = samples(found[-1])  # a log appended to by an earlier process of that name
        pulled += value(metrics, "modelplane_worker_pull_duration_seconds_count", outcome="ok")
        assert ("modelplane_worker_cache_used_bytes", frozenset()) in metrics
        assert value(metrics, "process_resident_memory_bytes") > 0
    assert pulled >= 1


def test_gc_dry_run_from_the_command_line(plane: Platform) -> None:
    command = [sys.executable, "-m", "cli", "--url", plane.cp.url, "--token", plane.token or ""]
    run = subprocess.run(
        [*command, "gc", "--dry-run", "-o", "json"],
        cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["dry_run"] is True and report["skipped"] is False
    assert isinstance(report["blobs"], list) and report["bytes"] >= 0
    table = subprocess.run(
        [*command, "gc", "--dry-run"],
        cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0 and "would remove" in table.stdout, table.stderr


def test_metrics_sum_over_worker_processes(tmp_path: Path) -> None:
    """Two uvicorn processes behind one port: every scrape, whichever process answers,
    reports all requests (prometheus multiprocess mode)."""
    cp = ControlPlane(
        tmp_path,
        {
            "MODELPLANE_HOME": str(tmp_path / "home"),
            "MODELPLANE_WORKERS": "2",
            "MODELPLANE_AUTH_ENABLED": "false",
        },
    )
    try:
        cp.wait_ready()
        for _ in range(20):  # a new connection each time: spread over both processes
            assert httpx.get(f"{cp.url}/api/v1/models", timeout=10).status_code == 200
        counts = {
            value(
                samples(f"{cp.url}/metrics"),
                "modelplane_http_request_duration_seconds_count",
                method="GET",
                route="/api/v1/models",
                status="200",
            )  # fmt: skip
            for _ in range(6)
        }
        assert counts == {20.0}, counts
        lines = json_lines([cp.log_path])
        assert lines and {r["process"] for r in lines} == {"registry"}
    finally:
        cp.stop()
