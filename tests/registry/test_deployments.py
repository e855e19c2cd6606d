"""Deployments over HTTP: create, read, update (revisions), rollback, alias following,
delete, bad input, and the audit events, on SQLite and Postgres."""

from __future__ import annotations

import httpx

from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deploy,
    deployable,
    events_of,
    get_deployment,
    pg_template,
    replicas_of,
)
from tests.registry.helpers import API, assert_problem, create_version


async def test_create_pinned_deployment_waits_for_a_worker(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    created = await deploy(client, model, name="web", version=v1, replicas=2)
    assert created["name"] == "web" and created["model"] == model
    assert (created["version"], created["alias"], created["revision"]) == (v1, None, 1)
    assert created["status"] == "pending" and created["status_reason"] == "no live worker"
    assert (created["replicas"], created["gpus"], created["device"]) == (2, 0, "auto")
    assert created["batching"] == {"max_batch_size": 32, "max_delay_ms": 0.0}
    observed = created["observed"]
    assert observed["version"] is None and observed["ready_replicas"] == 0
    assert [(r["index"], r["desired"], r["state"], r["worker"]) for r in observed["replicas"]] == [
        (0, "run", "pending", None),
        (1, "run", "pending", None),
    ]
    assert await get_deployment(client, "web") == created
    listed = (await client.get(f"{API}/deployments")).json()
    assert listed == {"items": [created], "next_cursor": None}
    revisions = (await client.get(f"{API}/deployments/web/revisions")).json()["items"]
    assert [(r["revision"], r["version"], r["reason"]) for r in revisions] == [(1, v1, "create")]
    assert revisions[0]["settings"]["replicas"] == 2
    replicas = (await client.get(f"{API}/deployments/web/replicas")).json()["items"]
    assert replicas == observed["replicas"]
    assert (await client.get(f"{API}/deployments/web/endpoints")).json()["items"] == []


async def test_bad_deployments_are_refused(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model)
    pending = (await create_version(client, model, {"w": b"pending"}))["version"]
    url = f"{API}/deployments"
    cases = [
        ({"model": "ghost", "version": 1}, 404, "model-not-found"),
        ({"model": model, "version": 99}, 404, "version-not-found"),
        ({"model": model, "alias": "production"}, 404, "alias-not-found"),
        ({"model": model, "version": pending}, 409, "version-not-ready"),
        ({"model": model, "version": v1, "alias": "production"}, 422, "validation-error"),
        ({"model": model}, 422, "validation-error"),
        ({"model": model, "version": v1, "device": "cpu", "gpus": 1}, 422, None),
        ({"model": model, "version": v1, "device": "cuda"}, 422, None),
        ({"model": model, "version": v1, "replicas": 0}, 422, None),
        ({"model": model, "version": v1, "batching": {"max_batch_size": 0}}, 422, None),
    ]
    for body, status, code in cases:
        assert_problem(await client.post(url, json={"name": "d", **body}), status, code)
    assert_problem(
        await client.post(url, json={"name": "Bad Name", "model": model, "version": 1}), 422
    )
    await deploy(client, model, name="d", version=v1)
    assert_problem(
        await client.post(url, json={"name": "d", "model": model, "version": v1}),
        409,
        "deployment-already-exists",
    )
    assert_problem(await client.get(f"{url}/ghost"), 404, "deployment-not-found")
    assert_problem(await client.patch(f"{url}/ghost", json={"replicas": 2}), 404)
    assert_problem(await client.patch(f"{url}/d", json={"device": "cuda"}), 422, "invalid-settings")
    assert_problem(await client.patch(f"{url}/d", json={"version": 99}), 404, "version-not-found")
    assert_problem(await client.patch(f"{url}/d", json={"version": pending}), 409)
    assert (await get_deployment(client, "d"))["revision"] == 1


async def test_update_makes_a_revision_only_when_something_changes(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1)
    url = f"{API}/deployments/web"
    updated = (await client.patch(url, json={"version": v2})).json()
    assert (updated["revision"], updated["version"]) == (2, v2)
    assert [r["revision"] for r in replicas_of(updated)] == [1, 2]  # the old one still runs
    same = (await client.patch(url, json={"version": v2})).json()
    assert same["revision"] == 2
    scaled = await client.patch(url, json={"replicas": 3, "batching": {"max_batch_size": 4}})
    body = scaled.json()
    assert (body["revision"], body["version"], body["replicas"]) == (3, v2, 3)
    assert body["batching"]["max_batch_size"] == 4
    revisions = (await client.get(f"{url}/revisions")).json()["items"]
    assert [(r["revision"], r["version"], r["reason"]) for r in revisions] == [
        (3, v2, "update"),
        (2, v2, "update"),
        (1, v1, "create"),
    ]
    page = (await client.get(f"{url}/revisions", params={"limit": 2})).json()
    assert [r["revision"] for r in page["items"]] == [3, 2] and page["next_cursor"]
    rest = (await client.get(f"{url}/revisions", params={"cursor": page["next_cursor"]})).json()
    assert [r["revision"] for r in rest["items"]] == [1]


async def test_rollback_to_previous_and_to_a_revision(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    await deploy(client, model, name="web", version=v1)
    url = f"{API}/deployments/web"
    assert_problem(await client.post(f"{url}/rollback"), 409, "deployment-has-no-history")
    await client.patch(url, json={"version": v2})
    await client.patch(url, json={"version": v3})
    back = (await client.post(f"{url}/rollback")).json()
    assert (back["revision"], back["version"]) == (4, v2)
    first = (await client.post(f"{url}/rollback", json={"to_revision": 1})).json()
    assert (first["revision"], first["version"]) == (5, v1)
    assert_problem(await client.post(f"{url}/rollback", json={"to_revision": 99}), 404)
    assert_problem(await client.post(f"{url}/rollback", json={"to_revision": 0}), 422)
    revisions = (await client.get(f"{url}/revisions")).json()["items"]
    assert [(r["version"], r["reason"]) for r in revisions] == [
        (v1, "rollback"),
        (v2, "rollback"),
        (v3, "update"),
        (v2, "update"),
        (v1, "create"),
    ]


async def test_alias_moves_roll_out_the_deployments_following_it(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    alias = f"{API}/models/{model}/aliases/production"
    await client.put(alias, json={"version": v1})
    follows = await deploy(client, model, name="prod", alias="production")
    assert (follows["version"], follows["alias"]) == (v1, "production")
    await deploy(client, model, name="pinned", version=v1)
    assert (await client.put(alias, json={"version": v2})).status_code == 200
    moved = await get_deployment(client, "prod")
    assert (moved["revision"], moved["version"], moved["alias"]) == (2, v2, "production")
    assert (await client.post(f"{alias}/rollback")).status_code == 200
    back = await get_deployment(client, "prod")
    assert (back["revision"], back["version"]) == (3, v1)
    reasons = [
        r["reason"] for r in (await client.get(f"{API}/deployments/prod/revisions")).json()["items"]
    ]
    assert reasons == ["rollback", "alias-moved", "create"]
    assert (await get_deployment(client, "pinned"))["revision"] == 1
    pinned = (await client.patch(f"{API}/deployments/prod", json={"version": v2})).json()
    assert (pinned["alias"], pinned["version"]) == (None, v2)
    await client.put(alias, json={"version": v2})
    await client.put(alias, json={"version": v1})
    assert (await get_deployment(client, "prod"))["revision"] == 4  # no longer following


async def test_delete_of_a_deployment_nobody_runs_is_immediate(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1, replicas=2)
    assert (await client.delete(f"{API}/deployments/web")).status_code == 204
    assert_problem(await client.get(f"{API}/deployments/web"), 404)
    assert_problem(await client.delete(f"{API}/deployments/web"), 404)
    again = await deploy(client, model, name="web", version=v1)
    assert again["revision"] == 1


async def test_deployment_changes_are_events(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1)
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    await client.delete(f"{API}/deployments/web")
    events = [e for e in await events_of(client, model) if e["target"] == "deployment:web"]
    assert [e["action"] for e in events] == [
        "deployment.created",
        "deployment.revision_created",
        "deployment.revision_created",
        "deployment.deleting",
        "deployment.deleted",
    ]
    assert events[2]["after"] == {"revision": 2, "version": v2, "reason": "update"}


async def test_a_deployed_model_or_version_cannot_be_deleted(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    assert_problem(await client.delete(f"{API}/models/{model}"), 409, "still-referenced")
    version = f"{API}/models/{model}/versions/{v1}"
    assert_problem(await client.delete(version), 409, "still-referenced")
    assert (await client.get(version)).status_code == 200
    await client.delete(f"{API}/deployments/web")
    assert (await client.delete(f"{API}/models/{model}")).status_code == 204
