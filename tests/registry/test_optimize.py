"""`optimize` on deployments over HTTP: stored per revision (rolls out and back), refused at
deploy time (422 saying why) where no worker could apply or check it, and the figures a
serving process reports kept on its endpoint and revision; on SQLite and Postgres."""

from __future__ import annotations

from typing import Any

import httpx

from tests.registry.deploying import (  # noqa: F401  (fixtures)
    announce,
    database_url,
    deploy,
    heartbeat,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API, assert_problem, ready_version

EXAMPLE = {"inputs": [{"name": None, "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


async def _version(client: httpx.AsyncClient, model: str, fmt: str, example: bool) -> int:
    name = {"onnx": "model.onnx", "keras": "model.keras"}.get(fmt, "model.pt")
    metadata = {"example": EXAMPLE} if example else {}
    return await ready_version(
        client, model, {name: f"{fmt}-{example}".encode()}, format=fmt, metadata=metadata
    )


async def _refused(client: httpx.AsyncClient, body: dict[str, Any], detail: str) -> None:
    answer = await client.post(f"{API}/deployments", json={"name": "o", **body})
    assert_problem(answer, 422, "invalid-settings")
    assert detail in answer.json()["detail"], answer.json()


async def test_optimize_is_stored_per_revision_and_rolls_back(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await _version(client, model, "torchscript", example=True)
    made = await deploy(client, model, name="o", version=v1, optimize="int8_dynamic")
    assert made["optimize"]["mode"] == "int8_dynamic" and made["optimize"]["unchecked"] is False
    limits = {"mode": "int8_dynamic", "max_abs_error": 0.01, "min_top1_agreement": 0.99}
    patched = await client.patch(f"{API}/deployments/o", json={"optimize": limits})
    assert patched.status_code == 200, patched.text
    assert patched.json()["revision"] == 2 and patched.json()["optimize"]["max_abs_error"] == 0.01
    back = await client.post(f"{API}/deployments/o/rollback", json={})
    assert back.json()["revision"] == 3 and back.json()["optimize"]["max_abs_error"] is None
    revisions = (await client.get(f"{API}/deployments/o/revisions")).json()["items"]
    assert [r["settings"]["optimize"]["mode"] for r in revisions] == ["int8_dynamic"] * 3


async def test_optimize_refusals_say_why(client: httpx.AsyncClient, model: str) -> None:
    ts = await _version(client, model, "torchscript", example=True)
    bare = await _version(client, model, "torchscript", example=False)
    keras = await _version(client, model, "keras", example=True)
    base = {"model": model, "version": ts}
    await _refused(
        client, {**base, "version": keras, "optimize": "int8_dynamic"},
        "int8_dynamic is not supported for format keras",
    )  # fmt: skip
    await _refused(client, {**base, "optimize": "fp16"}, "fp16 needs a CUDA device")
    await _refused(client, {**base, "device": "cpu", "optimize": "fp16"}, "device is cpu")
    await _refused(
        client, {**base, "version": bare, "optimize": "int8_dynamic"}, "no example input"
    )
    unchecked = {"mode": "int8_dynamic", "unchecked": True}
    made = await deploy(client, model, version=bare, optimize=unchecked)
    assert made["optimize"]["unchecked"] is True
    bad = await client.post(f"{API}/deployments", json={**base, "name": "x", "optimize": "int4"})
    assert bad.status_code == 422


async def test_reported_figures_show_on_endpoint_and_revision(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await _version(client, model, "torchscript", example=True)
    await deploy(client, model, name="o", version=v1, optimize="int8_dynamic")
    worker = await register_worker(client)
    [assignment] = await heartbeat(client, worker)
    assert assignment["optimize"]["mode"] == "int8_dynamic"
    endpoint = await announce(client, assignment["replica_id"], status="warming")
    report = {
        "requested": "int8_dynamic", "applied": "int8_dynamic", "passed": True, "examples": 1,
        "max_abs_error": 0.002, "size_bytes_before": 1000, "size_bytes_after": 300,
        "latency_ms_before": 2.0, "latency_ms_after": 1.0,
    }  # fmt: skip
    beat = await client.post(
        f"{API}/endpoints/{endpoint}/heartbeat", json={"status": "ready", "optimization": report}
    )
    assert beat.status_code == 200 and beat.json()["optimization"]["max_abs_error"] == 0.002
    [revision] = (await client.get(f"{API}/deployments/o/revisions")).json()["items"]
    assert revision["optimization"]["size_bytes_after"] == 300
    assert revision["optimization"]["applied"] == "int8_dynamic"
