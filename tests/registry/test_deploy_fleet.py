"""Workers and endpoints over HTTP: registration, heartbeats, claims within capacity, lease
lapses, and the rollout they drive. The test is the worker (and the serving process): it
speaks the real protocol of docs/deployments-contract.md."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from registry.db import SessionFactory
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.conftest import client_for
from tests.registry.deploying import (  # noqa: F401  (fixtures)
    announce,
    database_url,
    deploy,
    deployable,
    events_of,
    get_deployment,
    heartbeat,
    pg_template,
    register_worker,
    replicas_of,
)
from tests.registry.helpers import API, assert_problem, sha

LEASE_S = 1.0  # short, yet long enough for a loaded machine to heartbeat within it


@pytest_asyncio.fixture(loop_scope="session")
async def short_lease(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the same database whose control plane gives leases of ``LEASE_S``."""
    quick = settings.model_copy(update={"lease_ttl_s": LEASE_S, "heartbeat_s": 0.1})
    async with client_for(quick, sessions, fs_artifacts) as c:
        yield c


async def test_worker_registers_and_claims_within_its_cpu_slots(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1, replicas=2)
    registered = await client.post(
        f"{API}/workers", json={"name": "a", "host": "h", "address": "10.0.0.1", "cpu_slots": 1}
    )
    assert registered.status_code == 201
    worker = registered.json()
    assert (worker["lease_ttl_s"], worker["heartbeat_s"], worker["live"]) == (15.0, 3.0, True)
    [assignment] = await heartbeat(client, worker["id"])
    assert assignment["deployment"] == "web" and assignment["desired"] == "run"
    assert (assignment["model"], assignment["version"], assignment["revision"]) == (model, v1, 1)
    assert assignment["format"] == "torchscript" and assignment["gpu_ids"] == []
    assert assignment["device"] == "auto" and assignment["allow_pickle"] is False
    [file] = assignment["files"]
    assert file["sha256"] == sha(b"weights") and file["size"] == 7
    assert file["url"] == f"http://registry.test{API}/models/{model}/versions/{v1}/files/model.pt"
    download = await client.get(file["url"])
    assert download.status_code == 200 and download.content == b"weights"
    again = await client.get(f"{API}/workers/{worker['id']}/assignments")
    assert again.json()["assignments"] == [assignment]
    assert len(await heartbeat(client, worker["id"])) == 1  # full: no second claim
    other = await register_worker(client, cpu_slots=4)
    [second] = await heartbeat(client, other)
    assert second["replica_id"] != assignment["replica_id"]
    deployment = await get_deployment(client, "web")
    assert deployment["status"] == "rolling_out"
    assert {r["worker"] for r in replicas_of(deployment)} == {worker["id"], other}
    workers = (await client.get(f"{API}/workers")).json()["items"]
    assert {w["id"] for w in workers} == {worker["id"], other}


async def test_gpu_replicas_take_distinct_gpus_and_too_many_gpus_stay_pending(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="big", version=v1, gpus=4, device="cuda")
    await deploy(client, model, name="pair", version=v1, gpus=2, replicas=2)
    worker = await register_worker(client, gpus=[0, 1, 2], cpu_slots=0)
    [assignment] = await heartbeat(client, worker)
    assert assignment["deployment"] == "pair" and assignment["gpu_ids"] == [0, 1]
    big = await get_deployment(client, "big")
    assert big["status"] == "pending"
    assert big["status_reason"] == "no worker has 4 GPUs (the largest has 3)"
    pair = await get_deployment(client, "pair")
    assert pair["status_reason"] == "waiting for a worker with 2 free GPUs"
    second = await register_worker(client, gpus=[0, 1], cpu_slots=0)
    [other] = await heartbeat(client, second)
    assert other["deployment"] == "pair" and other["gpu_ids"] == [0, 1]
    assert (await get_deployment(client, "pair"))["status_reason"] is None


async def test_unknown_worker_must_register_again(client: httpx.AsyncClient) -> None:
    r = await client.post(f"{API}/workers/nobody/heartbeat", json={"replicas": []})
    assert_problem(r, 404, "worker-not-found")
    assert_problem(await client.get(f"{API}/workers/nobody/assignments"), 404)
    bad = await client.post(f"{API}/workers", json={"name": "w", "gpus": [0, 0]})
    assert_problem(bad, 422)


async def test_a_lapsed_lease_goes_to_another_worker(
    short_lease: httpx.AsyncClient, model: str
) -> None:
    client = short_lease
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    first = await register_worker(client)
    [claimed] = await heartbeat(client, first)
    second = await register_worker(client)
    assert await heartbeat(client, second) == []  # held by the first
    for _ in range(20):  # the second keeps heartbeating, the first is silent
        await asyncio.sleep(LEASE_S / 4)
        if taken := await heartbeat(client, second):
            break
    assert [a["replica_id"] for a in taken] == [claimed["replica_id"]]
    lapsed = await client.post(f"{API}/workers/{first}/heartbeat", json={"replicas": []})
    assert_problem(lapsed, 404, "worker-not-found")
    claims = [e for e in await events_of(client, model) if e["action"] == "replica.claimed"]
    assert [c["after"]["worker"] for c in claims] == [first, second]
    assert claims[1]["before"] == {"worker": first}


async def test_rollout_stops_an_old_replica_per_ready_new_one(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1, replicas=2)
    worker = await register_worker(client, cpu_slots=4)
    old = [a["replica_id"] for a in await heartbeat(client, worker)]
    await heartbeat(client, worker, {old[0]: "pulling", old[1]: "ready"})
    web = await get_deployment(client, "web")
    assert web["status"] == "rolling_out"
    # a worker's "ready" waits for the endpoint: the stable URL needs somewhere to send calls
    assert [r["state"] for r in replicas_of(web)] == ["pulling", "warming"]
    for replica in old:
        await announce(client, replica)
    web = await get_deployment(client, "web")
    assert web["status"] == "available" and web["observed"]["ready_replicas"] == 2
    assert web["observed"]["version"] == v1

    await client.patch(f"{API}/deployments/web", json={"version": v2})
    assignments = await heartbeat(client, worker, dict.fromkeys(old, "ready"))
    new = [a["replica_id"] for a in assignments if a["revision"] == 2]
    assert len(new) == 2 and all(a["desired"] == "run" for a in assignments)
    await announce(client, new[0])
    desired = {a["replica_id"]: a["desired"] for a in await heartbeat(client, worker)}
    assert sorted(desired[r] for r in old) == ["run", "stop"]  # one for one
    web = await get_deployment(client, "web")
    assert web["status"] == "rolling_out" and web["observed"]["version"] == v2

    await announce(client, new[1])
    desired = {a["replica_id"]: a["desired"] for a in await heartbeat(client, worker)}
    assert [desired[r] for r in old] == ["stop", "stop"]
    assert [desired[r] for r in new] == ["run", "run"]
    assert (await get_deployment(client, "web"))["status"] == "available"
    left = await heartbeat(client, worker, dict.fromkeys(old, "stopped"))
    assert sorted(a["replica_id"] for a in left) == sorted(new)  # stopped ones are forgotten
    actions = [e["action"] for e in await events_of(client, model)]
    assert actions.count("deployment.rollout_finished") == 2
    assert actions.count("replica.stop_requested") == 2


async def test_a_failed_new_revision_keeps_the_old_one_serving(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1)
    worker = await register_worker(client, cpu_slots=2)
    [old] = [a["replica_id"] for a in await heartbeat(client, worker)]
    await announce(client, old)
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    [new] = [a["replica_id"] for a in await heartbeat(client, worker) if a["revision"] == 2]
    reason = "sha256 mismatch for model.pt"
    assignments = await heartbeat(client, worker, {old: "ready", new: ("failed", reason)})
    assert {a["replica_id"]: a["desired"] for a in assignments} == {old: "run", new: "run"}
    web = await get_deployment(client, "web")
    assert web["status"] == "failed" and reason in web["status_reason"]
    assert web["observed"]["version"] == v1
    [failed] = replicas_of(web, 2)
    assert (failed["state"], failed["reason"]) == ("failed", reason)
    events = await events_of(client, model)
    [event] = [e for e in events if e["action"] == "deployment.failed"]
    assert event["after"]["revision"] == 2 and reason in event["after"]["reason"]
    back = (await client.post(f"{API}/deployments/web/rollback")).json()
    assert (back["revision"], back["version"]) == (3, v1)


async def test_auto_rollback_starts_a_rollback_when_a_revision_fails(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    created = await deploy(client, model, name="web", version=v1)
    assert created["auto_rollback"] is False
    worker = await register_worker(client, cpu_slots=3)
    [old] = [a["replica_id"] for a in await heartbeat(client, worker)]
    await announce(client, old)
    patched = await client.patch(
        f"{API}/deployments/web", json={"version": v2, "auto_rollback": True}
    )
    assert patched.json()["auto_rollback"] is True
    [new] = [a["replica_id"] for a in await heartbeat(client, worker) if a["revision"] == 2]
    reason = "model.pt: cannot load: boom"
    assignments = await heartbeat(client, worker, {old: "ready", new: ("failed", reason)})
    web = await get_deployment(client, "web")
    assert (web["revision"], web["version"], web["auto_rollback"]) == (3, v1, False)
    assert web["status"] == "pending", web
    desired = {a["replica_id"]: (a["revision"], a["desired"]) for a in assignments}
    assert desired[old] == (1, "run") and desired[new] == (2, "stop")
    revisions = (await client.get(f"{API}/deployments/web/revisions")).json()["items"]
    assert [(r["revision"], r["version"], r["reason"]) for r in revisions] == [
        (3, v1, "rollback"),
        (2, v2, "update"),
        (1, v1, "create"),
    ]
    actions = [e["action"] for e in await events_of(client, model)]
    assert actions.index("deployment.failed") < actions.index("deployment.auto_rolled_back")
    [back] = [e for e in await events_of(client, model) if e["action"].endswith("rolled_back")]
    assert back["before"] == {"revision": 2, "version": v2}
    assert back["after"] == {"to_revision": 1, "version": v1}
    [fresh] = [a for a in await heartbeat(client, worker) if a["revision"] == 3]
    await announce(client, fresh["replica_id"])
    now = await heartbeat(client, worker, {old: "ready", fresh["replica_id"]: "ready"})
    assert {a["replica_id"]: a["desired"] for a in now}[old] == "stop"  # one for one
    await heartbeat(client, worker, {old: "stopped", new: "stopped", fresh["replica_id"]: "ready"})
    assert (await get_deployment(client, "web"))["status"] == "available"


async def test_a_process_the_worker_saw_exit_makes_its_endpoint_unhealthy(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    worker = await register_worker(client)
    [replica] = [a["replica_id"] for a in await heartbeat(client, worker)]
    first = await announce(client, replica)
    await heartbeat(client, worker, {replica: "ready"})
    crashed = "exited with code -9; retry after 1s"
    await heartbeat(client, worker, {replica: ("unhealthy", crashed)})
    [endpoint] = (await client.get(f"{API}/deployments/web/endpoints")).json()["items"]
    assert (endpoint["id"], endpoint["status"]) == (first, "unhealthy")
    web = await get_deployment(client, "web")
    assert replicas_of(web)[0]["state"] == "unhealthy" and web["observed"]["ready_replicas"] == 0
    second = await announce(client, replica)  # the restarted process registers anew
    await heartbeat(client, worker, {replica: "ready"})
    [endpoint] = (await client.get(f"{API}/deployments/web/endpoints")).json()["items"]
    assert (endpoint["id"], endpoint["status"]) == (second, "ready")
    changes = [
        (e["before"], e["after"]["status"])
        for e in await events_of(client, model)
        if e["action"] == "endpoint.status_changed"
    ]
    assert changes == [("ready", "unhealthy")]


async def test_a_failed_rollback_is_not_rolled_back_again(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1, auto_rollback=True)
    worker = await register_worker(client, cpu_slots=3)
    [first] = [a["replica_id"] for a in await heartbeat(client, worker)]
    await heartbeat(client, worker, {first: ("failed", "cannot load")})
    assert (await get_deployment(client, "web"))["revision"] == 1  # nothing before revision 1
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    await client.post(f"{API}/deployments/web/rollback", json={"to_revision": 1})
    [again] = [a["replica_id"] for a in await heartbeat(client, worker) if a["revision"] == 3]
    await heartbeat(client, worker, {again: ("failed", "cannot load")})
    web = await get_deployment(client, "web")
    assert (web["revision"], web["status"]) == (3, "failed")


async def test_endpoints_report_the_replica_state(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    worker = await register_worker(client)
    [assignment] = await heartbeat(client, worker)
    replica = assignment["replica_id"]
    body = {"url": "http://127.0.0.1:9/", "replica_id": replica, "status": "loading"}
    registered = await client.post(f"{API}/endpoints", json=body)
    assert registered.status_code == 201, registered.text
    endpoint = registered.json()
    assert endpoint["url"] == "http://127.0.0.1:9" and endpoint["worker"] == worker
    assert (endpoint["deployment"], endpoint["revision"], endpoint["version"]) == ("web", 1, v1)
    beat = await client.post(
        f"{API}/endpoints/{endpoint['id']}/heartbeat", json={"status": "ready"}
    )
    assert beat.status_code == 200 and beat.json()["status"] == "ready"
    web = await get_deployment(client, "web")
    assert web["status"] == "available" and replicas_of(web)[0]["state"] == "ready"
    await heartbeat(client, worker, {replica: "loading"})  # a stale worker view: endpoint wins
    assert replicas_of(await get_deployment(client, "web"))[0]["state"] == "ready"
    [listed] = (await client.get(f"{API}/deployments/web/endpoints")).json()["items"]
    assert listed["id"] == endpoint["id"] and listed["status"] == "ready"
    assert (await client.delete(f"{API}/endpoints/{endpoint['id']}")).status_code == 204
    assert replicas_of(await get_deployment(client, "web"))[0]["state"] == "stopped"
    assert_problem(await client.delete(f"{API}/endpoints/{endpoint['id']}"), 404)
    missing = await client.post(f"{API}/endpoints", json={**body, "replica_id": "nope"})
    assert_problem(missing, 404, "replica-not-found")
    actions = [e["action"] for e in await events_of(client, model)]
    assert {"endpoint.registered", "endpoint.status_changed", "endpoint.deregistered"} <= set(
        actions
    )


async def test_delete_drains_then_forgets_the_deployment(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    worker = await register_worker(client)
    [assignment] = await heartbeat(client, worker)
    replica = assignment["replica_id"]
    await announce(client, replica)
    deleting = await client.delete(f"{API}/deployments/web")
    assert deleting.status_code == 202 and deleting.json()["status"] == "deleting"
    assert_problem(await client.patch(f"{API}/deployments/web", json={"replicas": 2}), 409)
    [stop] = await heartbeat(client, worker, {replica: "draining"})
    assert stop["desired"] == "stop"
    assert (await get_deployment(client, "web"))["status"] == "deleting"
    assert await heartbeat(client, worker, {replica: "stopped"}) == []
    assert_problem(await client.get(f"{API}/deployments/web"), 404)
    actions = [e["action"] for e in await events_of(client, model)]
    assert actions[-1] == "deployment.deleted"


async def test_concurrent_heartbeats_claim_each_replica_once(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1, replicas=3)
    workers = [await register_worker(client) for _ in range(5)]
    for _ in range(5):  # a deployment locked by one heartbeat is skipped by the others
        answers = await asyncio.gather(*(heartbeat(client, w) for w in workers))
        claimed = [a["replica_id"] for answer in answers for a in answer]
        assert len(claimed) == len(set(claimed))
    # A full worker's heartbeat also takes the lock (it reconciles), so in lock-step rounds
    # the same full worker can win it every time; real heartbeats drift apart. One at a
    # time, the free workers claim the rest, still each replica once.
    for w in workers:
        await heartbeat(client, w)
    answers = await asyncio.gather(*(heartbeat(client, w) for w in workers))
    claimed = [a["replica_id"] for answer in answers for a in answer]
    assert len(claimed) == len(set(claimed))
    assert len(claimed) == 3
    web = await get_deployment(client, "web")
    assert sorted(r["worker"] in workers for r in replicas_of(web)) == [True] * 3


async def test_a_deployment_deleted_while_its_worker_died_is_swept_by_another(
    short_lease: httpx.AsyncClient, model: str
) -> None:
    client = short_lease
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    dying = await register_worker(client)
    [assignment] = await heartbeat(client, dying)
    await announce(client, assignment["replica_id"])
    assert (await client.delete(f"{API}/deployments/web")).status_code == 202
    survivor = await register_worker(client)
    for _ in range(20):  # the dying worker never heartbeats again
        await asyncio.sleep(LEASE_S / 4)
        assert await heartbeat(client, survivor) == []
        if (await client.get(f"{API}/deployments/web")).status_code == 404:
            break
    assert_problem(await client.get(f"{API}/deployments/web"), 404)


async def test_concurrent_protocol_traffic_never_fails(
    client: httpx.AsyncClient, model: str
) -> None:
    """Heartbeats, endpoint reports and updates at once: locks are taken in one order, so
    nothing deadlocks (Postgres) and nothing is claimed twice."""
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    for name in ("a", "b"):
        await deploy(client, model, name=name, version=v1, replicas=2)
    workers = [await register_worker(client, cpu_slots=3) for _ in range(3)]
    announced: dict[str, str] = {}

    async def worker_round(worker: str) -> None:
        response = await client.post(f"{API}/workers/{worker}/heartbeat", json={"replicas": []})
        assert response.status_code == 200, response.text
        for a in response.json()["assignments"]:
            if a["desired"] == "run" and a["replica_id"] not in announced:
                body = {
                    "url": "http://127.0.0.1:9",
                    "replica_id": a["replica_id"],
                    "status": "ready",
                }
                answer = await client.post(f"{API}/endpoints", json=body)
                assert answer.status_code == 201, answer.text
                announced[a["replica_id"]] = answer.json()["id"]

    async def endpoints_round() -> None:
        for endpoint in list(announced.values()):
            beat = await client.post(
                f"{API}/endpoints/{endpoint}/heartbeat", json={"status": "ready"}
            )
            assert beat.status_code == 200, beat.text  # nothing deregisters endpoints here

    for round_ in range(6):
        version = v2 if round_ % 2 else v1
        patches = [
            client.patch(f"{API}/deployments/{name}", json={"version": version})
            for name in ("a", "b")
        ]
        answers = await asyncio.gather(
            *(worker_round(w) for w in workers), endpoints_round(), *patches
        )
        for answer in answers[-2:]:
            assert answer.status_code == 200, answer.text
    for name in ("a", "b"):
        replicas = replicas_of(await get_deployment(client, name))
        held = [r for r in replicas if r["worker"] is not None]
        assert len({r["id"] for r in held}) == len(held)


async def test_events_filter_by_deployment_and_model(client: httpx.AsyncClient, model: str) -> None:
    """`?deployment=` gives a deployment's whole story (revisions, status, replica states,
    endpoints) and nothing of its neighbours; it outlives the deployment."""
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1)
    await deploy(client, model, name="batch", version=v1)
    worker = await register_worker(client, cpu_slots=2)
    assignments = await heartbeat(client, worker)
    by_name = {a["deployment"]: a["replica_id"] for a in assignments}
    await heartbeat(client, worker, {by_name["web"]: "pulling"})
    await announce(client, by_name["web"])

    async def events(**params: str) -> list[dict[str, object]]:
        response = await client.get(f"{API}/events", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        items: list[dict[str, object]] = response.json()["items"]
        return items

    web = await events(deployment="web")
    assert {e["target"] for e in web} == {"deployment:web"}
    actions = [e["action"] for e in web]
    for expected in (
        "deployment.created",
        "deployment.revision_created",
        "replica.claimed",
        "replica.state_changed",
        "endpoint.registered",
        "deployment.rollout_finished",
    ):
        assert expected in actions, (expected, actions)
    [pulling] = [
        e
        for e in web
        if e["action"] == "replica.state_changed" and e["after"]["state"] == "pulling"  # type: ignore[index]
    ]
    assert pulling["after"]["replica"] == by_name["web"]  # type: ignore[index]
    batch = await events(deployment="batch")
    assert batch and {e["target"] for e in batch} == {"deployment:batch"}
    assert "endpoint.registered" not in [e["action"] for e in batch]
    both = await events(model=model)
    assert {e["id"] for e in web} | {e["id"] for e in batch} <= {e["id"] for e in both}
    claimed = await events(deployment="web", action="replica.claimed")
    assert [e["action"] for e in claimed] == ["replica.claimed"]
    assert await events(deployment="web", model="some-other-model") == []
    assert await events(deployment="nothing-here") == []
    first = (await client.get(f"{API}/events", params={"deployment": "web", "limit": 2})).json()
    rest = await events(deployment="web", cursor=first["next_cursor"])
    assert [e["id"] for e in first["items"] + rest] == [e["id"] for e in web]
    assert (await client.delete(f"{API}/deployments/batch")).status_code == 202
    assert len(await events(deployment="batch")) > len(batch)  # events outlive it
    assert_problem(await client.get(f"{API}/events", params={"deployment": "Not A Name"}), 422)
    assert_problem(await client.get(f"{API}/events", params={"model": "../x"}), 422)


async def _stopped(client: httpx.AsyncClient, worker: str, replica: str) -> list[dict[str, Any]]:
    """The worker drained ``replica``: it reports it stopped; the assignments after."""
    await heartbeat(client, worker, {replica: "stopped"})
    return await heartbeat(client, worker)


async def test_no_room_beside_the_old_stops_one_old_replica_first(
    client: httpx.AsyncClient, model: str
) -> None:
    """A full worker: with 2 replicas, one old replica stops first, the other keeps serving;
    each new one that is ready lets the next old one go."""
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    created = await deploy(client, model, name="web", version=v1, replicas=2)
    assert created["max_unavailable"] == 1  # the default with 2 replicas
    worker = await register_worker(client, cpu_slots=2)
    old = [a["replica_id"] for a in await heartbeat(client, worker)]
    for replica in old:
        await announce(client, replica)
    assert (await get_deployment(client, "web"))["status"] == "available"

    web = (await client.patch(f"{API}/deployments/web", json={"version": v2})).json()
    assert web["status"] == "pending"
    assert web["status_reason"] == (
        "no worker has room for revision 2 beside the old replicas: "
        "stopping old replicas first (max_unavailable 1)"
    )
    assignments = await heartbeat(client, worker)
    desired = {a["replica_id"]: a["desired"] for a in assignments}
    assert sorted(desired.values()) == ["run", "stop"]  # no new replica fits: one old stops
    [first] = [r for r in old if desired[r] == "stop"]
    [other] = [r for r in old if r != first]
    # while it drains, nothing more stops
    desired = {a["replica_id"]: a["desired"] for a in await heartbeat(client, worker)}
    assert desired == {first: "stop", other: "run"}
    assert (await get_deployment(client, "web"))["status_reason"].endswith(
        "waiting for old replicas to stop first"
    )

    assignments = await _stopped(client, worker, first)
    [new0] = [a["replica_id"] for a in assignments if a["revision"] == 2]
    assert {a["replica_id"] for a in assignments} == {other, new0}
    await announce(client, new0)
    desired = {a["replica_id"]: a["desired"] for a in await heartbeat(client, worker)}
    assert desired == {other: "stop", new0: "run"}  # 1 ready stays (2 - max_unavailable)
    assignments = await _stopped(client, worker, other)
    [new1] = [a["replica_id"] for a in assignments if a["replica_id"] != new0]
    await announce(client, new1)
    web = await get_deployment(client, "web")
    assert web["status"] == "available" and web["status_reason"] is None
    assert web["observed"]["ready_replicas"] == 2 and web["observed"]["version"] == v2
    stops = [e for e in await events_of(client, model) if e["action"] == "replica.stop_requested"]
    assert [e["after"]["replica"] for e in stops] == [first, other]


async def test_a_single_replica_without_room_waits_until_max_unavailable_allows_it(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    created = await deploy(client, model, name="web", version=v1)
    assert created["max_unavailable"] == 0
    worker = await register_worker(client, cpu_slots=1)
    [old] = [a["replica_id"] for a in await heartbeat(client, worker)]
    await announce(client, old)

    await client.patch(f"{API}/deployments/web", json={"version": v2})
    for _ in range(2):
        [kept] = await heartbeat(client, worker)
        assert (kept["replica_id"], kept["desired"]) == (old, "run")
    web = await get_deployment(client, "web")
    assert web["status"] == "pending" and web["observed"]["version"] == v1
    assert web["status_reason"] == (
        "no worker has room for revision 2 beside the old replicas: set max_unavailable "
        "to 1 to stop one first (calls fail until its replacement is ready)"
    )
    # more room on another worker: the usual rollout, the old one stops only once ready
    roomy = await register_worker(client, cpu_slots=1)
    [placed] = await heartbeat(client, roomy)
    assert placed["revision"] == 2
    assert (await get_deployment(client, "web"))["status_reason"] is None
    await heartbeat(client, roomy, {placed["replica_id"]: ("failed", "boom")})
    assert (await get_deployment(client, "web"))["status"] == "failed"

    answer = await client.patch(f"{API}/deployments/web", json={"max_unavailable": 1})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["revision"], answer.json()["max_unavailable"]) == (3, 1)
    await _stopped(client, roomy, placed["replica_id"])  # revision 2's failed replica goes
    [new] = [a for a in await heartbeat(client, roomy) if a["revision"] == 3]
    await announce(client, new["replica_id"])
    [stop] = await heartbeat(client, worker)
    assert (stop["replica_id"], stop["desired"]) == (old, "stop")  # the usual one for one
    assert (await get_deployment(client, "web"))["status"] == "available"


async def test_max_unavailable_one_stops_a_single_replica_first(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(client, model, name="web", version=v1, max_unavailable=1)
    worker = await register_worker(client, cpu_slots=1)
    [old] = [a["replica_id"] for a in await heartbeat(client, worker)]
    await announce(client, old)
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    [stop] = await heartbeat(client, worker)
    assert (stop["replica_id"], stop["desired"]) == (old, "stop")
    [new] = await _stopped(client, worker, old)
    assert (new["revision"], new["desired"]) == (2, "run")
    await announce(client, new["replica_id"])
    assert (await get_deployment(client, "web"))["status"] == "available"
    same = await client.patch(f"{API}/deployments/web", json={"max_unavailable": 1})
    assert same.json()["revision"] == 2  # nothing changed: no new revision
    bad = await client.patch(f"{API}/deployments/web", json={"max_unavailable": -1})
    assert_problem(bad, 422)
