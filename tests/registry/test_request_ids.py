"""A deployment change's request id is kept on its revision and handed to workers with
their assignments (of the new revision and of the old one being drained), so the worker
and serving process logs of a rollout carry the id of the call that started it."""

from __future__ import annotations

import httpx

from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deployable,
    heartbeat,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API


async def test_revisions_and_assignments_carry_the_rollouts_request_id(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"one")
    v2 = await deployable(client, model, b"two")
    body = {"name": model, "model": model, "version": v1, "replicas": 1}
    made = await client.post(f"{API}/deployments", json=body, headers={"X-Request-ID": "r-1"})
    assert made.status_code == 201 and made.headers["x-request-id"] == "r-1"
    worker = await register_worker(client, cpu_slots=2)
    [first] = await heartbeat(client, worker)
    assert first["request_id"] == "r-1"

    patch = await client.patch(
        f"{API}/deployments/{model}", json={"version": v2}, headers={"X-Request-ID": "r-2"}
    )
    assert patch.status_code == 200, patch.text
    assignments = await heartbeat(client, worker, {first["replica_id"]: "ready"})
    # the new revision's replica and the old one (to drain later): the rollout's id on both
    assert {a["revision"] for a in assignments} == {1, 2}
    assert {a["request_id"] for a in assignments} == {"r-2"}
    revisions = (await client.get(f"{API}/deployments/{model}/revisions")).json()["items"]
    assert {r["revision"]: r["request_id"] for r in revisions} == {1: "r-1", 2: "r-2"}
