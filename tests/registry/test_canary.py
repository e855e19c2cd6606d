"""Canaries over HTTP, walked by the controller's ``tick()`` on a clock the test moves and
counts added as the gateways' reports are: waiting → running → steps → promoted, rollback
at once on a breach (error rate, p99) with the figures on the revision and an event, a step
waiting for calls, the ready timeout, promote/abort and their 409s, refusals, an alias move
starting a canary, and two controllers never both taking a step; on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from registry.app import create_app
from registry.db import SessionFactory
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deploy,
    deployable,
    events_of,
    get_deployment,
    heartbeat,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API, assert_problem
from tests.registry.traffic_support import (
    Clock,
    controller,
    count,
    desired,
    lanes,
    revisions,
    serve,
)

CANARY = {"steps": [10, 50], "interval_s": 60, "min_calls": 100, "max_error_rate": 0.05}


async def _canary_ready(
    client: httpx.AsyncClient, model: str, **canary: Any
) -> tuple[int, int, str]:
    """web on v1 (available) with a canary of v2 whose replica is ready; (v1, v2, worker)."""
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    strategy = {"canary": {**CANARY, **canary}}
    await deploy(client, model, name="web", version=v1, strategy=strategy)
    worker = await register_worker(client, cpu_slots=8)
    assert (await serve(client, worker, "web"))["status"] == "available"
    started = (await client.patch(f"{API}/deployments/web", json={"version": v2})).json()
    assert started["canary"]["state"] == "waiting"
    await serve(client, worker, "web")
    return v1, v2, worker


async def _canary_running(
    client: httpx.AsyncClient, model: str, tick: Any, **canary: Any
) -> tuple[int, int, str]:
    """As ``_canary_ready``, and ``tick`` started it: running at its first step."""
    ready = await _canary_ready(client, model, **canary)
    assert await tick() == ["web"]
    return ready


async def test_a_healthy_canary_walks_its_steps_and_is_promoted(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    control, changed = controller(sessions, fs_artifacts, settings, clock)
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    created = await deploy(client, model, name="web", version=v1, strategy={"canary": CANARY})
    assert created["strategy"]["canary"]["steps"] == [10, 50, 100]  # the last step promotes
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "web")
    web = (await client.patch(f"{API}/deployments/web", json={"version": v2})).json()
    assert (web["revision"], web["version"], web["status"]) == (1, v1, "available")
    assert lanes(web) == [(1, v1, "primary", 100), (2, v2, "canary", 0)]
    canary = web["canary"]
    assert (canary["revision"], canary["base_revision"], canary["state"]) == (2, 1, "waiting")
    assert web["status_reason"] == "canary revision 2 waiting for a ready replica"
    assert [(r["revision"], r["reason"]) for r in await revisions(client, "web")][0] == (
        2,
        "canary",
    )
    assert await control.tick() == []  # no canary replica is ready yet

    await serve(client, worker, "web")
    assert await control.tick() == ["web"]
    web = await get_deployment(client, "web")
    assert web["canary"]["state"] == "running" and web["canary"]["percent"] == 10
    assert lanes(web) == [(1, v1, "primary", 90), (2, v2, "canary", 10)]
    assert web["status_reason"] == "canary revision 2 at 10%"

    await count(sessions, "web", 2, clock.advance(1), calls=150, errors=1)
    await count(sessions, "web", 1, clock.now, calls=1350)
    clock.advance(30)
    assert await control.tick() == []  # healthy, but the interval is not over
    clock.advance(31)
    assert await control.tick() == ["web"]
    web = await get_deployment(client, "web")
    assert (web["canary"]["step"], web["canary"]["percent"]) == (1, 50)
    assert web["canary"]["figures"]["calls"] == 150
    assert web["canary"]["base_figures"]["calls"] == 1350
    assert lanes(web) == [(1, v1, "primary", 50), (2, v2, "canary", 50)]

    await count(sessions, "web", 2, clock.advance(1), calls=500)
    clock.advance(60)
    assert await control.tick() == ["web"]
    web = await get_deployment(client, "web")
    assert (web["revision"], web["version"], web["canary"]["state"]) == (2, v2, "promoted")
    assert lanes(web) == [(2, v2, "primary", 100), (1, v1, "primary", 0)]  # draining
    assert desired(web, 1) == ["stop"] and desired(web, 2) == ["run"]
    web = await serve(client, worker, "web")  # the old replica stops
    assert lanes(web) == [(2, v2, "primary", 100)] and desired(web, 1) == []
    verdict = (await revisions(client, "web"))[0]["verdict"]
    assert verdict["state"] == "promoted" and verdict["figures"]["calls"] == 500
    assert changed == ["web", "web", "web"]
    actions = [e["action"] for e in await events_of(client, model)]
    for action in ("canary_started", "canary_step", "canary_promoted"):
        assert actions.count(f"deployment.{action}") == 1, actions
    assert await control.tick() == []  # done: nothing left to do


async def test_an_error_rate_breach_rolls_back_at_once(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["canary.rolled_back"]}
    assert (await client.post(f"{API}/webhooks", json=hook)).status_code == 201
    clock = Clock()
    control, _ = controller(sessions, fs_artifacts, settings, clock)
    v1, v2, _worker = await _canary_running(client, model, control.tick)
    await count(sessions, "web", 2, clock.advance(1), calls=60, errors=20)
    assert await control.tick() == []  # 60 calls: fewer than min_calls, no verdict yet
    await count(sessions, "web", 2, clock.advance(1), calls=40, errors=10)
    assert await control.tick() == ["web"]  # 100 calls, 30% errors: long before the interval
    web = await get_deployment(client, "web")
    canary = web["canary"]
    assert canary["state"] == "rolled_back" and canary["percent"] == 0
    assert canary["reason"].startswith("error rate 0.3 > max_error_rate 0.05")
    assert canary["figures"]["calls"] == 100 and canary["figures"]["errors"] == 30
    assert (web["revision"], web["version"]) == (1, v1)
    assert lanes(web) == [(1, v1, "primary", 100)]
    assert desired(web, 2) == ["stop"]
    verdict = (await revisions(client, "web"))[0]["verdict"]
    assert verdict["state"] == "rolled_back" and verdict["figures"]["error_rate"] == 0.3
    [event] = [
        e for e in await events_of(client, model) if e["action"] == "deployment.canary_rolled_back"
    ]
    assert event["after"]["figures"]["errors"] == 30 and event["after"]["version"] == v2
    assert_problem(await client.post(f"{API}/deployments/web/canary/abort"), 409, "no-canary")


async def test_a_p99_breach_rolls_back(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    control, _ = controller(sessions, fs_artifacts, settings, clock)
    await _canary_running(client, model, control.tick, max_p99_ms=100)
    await count(sessions, "web", 2, clock.advance(1), calls=100, ms=20)
    assert await control.tick() == []
    await count(sessions, "web", 2, clock.advance(1), calls=100, ms=250)
    assert await control.tick() == ["web"]
    canary = (await get_deployment(client, "web"))["canary"]
    assert canary["state"] == "rolled_back" and canary["reason"].startswith("p99 ")
    assert "> max_p99_ms 100" in canary["reason"] and canary["figures"]["p99_ms"] > 200


async def test_a_step_with_too_few_calls_waits(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    control, _ = controller(sessions, fs_artifacts, settings, clock)
    await _canary_running(client, model, control.tick)
    await count(sessions, "web", 2, clock.advance(1), calls=50)
    clock.advance(120)
    assert await control.tick() == []
    canary = (await get_deployment(client, "web"))["canary"]
    assert (canary["state"], canary["step"]) == ("running", 0)
    assert canary["reason"] == "step 1 (10%) waits for calls: 50 of min_calls 100"
    await count(sessions, "web", 2, clock.advance(1), calls=60)
    assert await control.tick() == ["web"]
    canary = (await get_deployment(client, "web"))["canary"]
    assert (canary["step"], canary["percent"], canary["reason"]) == (1, 50, None)


async def test_a_canary_never_ready_is_rolled_back_after_its_timeout(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    control, _ = controller(sessions, fs_artifacts, settings, clock)
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    strategy = {"canary": {**CANARY, "ready_timeout_s": 30}}
    await deploy(client, model, name="web", version=v1, strategy=strategy)
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "web")
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    clock.catch_up()  # started_at is the API's real time, however long the set-up took
    clock.advance(20)
    assert await control.tick() == []
    clock.advance(11)
    assert await control.tick() == ["web"]
    web = await get_deployment(client, "web")
    assert web["canary"]["reason"] == "canary revision 2 not ready within 30 s"
    assert lanes(web) == [(1, v1, "primary", 100)]
    assert desired(web, 2) == []  # never placed: forgotten at once

    # a canary replica that fails is rolled back with its reason
    await client.patch(f"{API}/deployments/web", json={"version": v3})
    [replica] = [a for a in await heartbeat(client, worker) if a["revision"] == 3]
    await heartbeat(client, worker, {replica["replica_id"]: ("failed", "bad weights")})
    assert await control.tick() == ["web"]
    canary = (await get_deployment(client, "web"))["canary"]
    assert (canary["revision"], canary["state"]) == (3, "rolled_back")
    assert canary["reason"] == "canary revision 3 replica 0 failed: bad weights"


async def test_promote_and_abort_by_request(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    control, _ = controller(sessions, fs_artifacts, settings, clock)
    v1, v2, worker = await _canary_running(client, model, control.tick)
    url = f"{API}/deployments/web"
    aborted = (await client.post(f"{url}/canary/abort")).json()
    assert aborted["canary"]["state"] == "aborted"
    assert aborted["canary"]["reason"] == "aborted by request (anonymous) at 10%"
    assert lanes(aborted) == [(1, v1, "primary", 100)] and desired(aborted, 2) == ["stop"]
    assert (await revisions(client, "web"))[0]["verdict"]["state"] == "aborted"
    assert_problem(await client.post(f"{url}/canary/abort"), 409, "no-canary")
    assert_problem(await client.post(f"{url}/canary/promote"), 409, "no-canary")

    v3 = await deployable(client, model, b"3")
    waiting = (await client.patch(url, json={"version": v3})).json()
    assert waiting["canary"]["revision"] == 3
    promoted = (await client.post(f"{url}/canary/promote")).json()
    assert (promoted["revision"], promoted["version"]) == (3, v3)
    assert promoted["canary"]["state"] == "promoted"
    # not ready yet: the old revision takes the calls, and stops as the new one is ready
    assert lanes(promoted) == [(3, v3, "primary", 0), (1, v1, "primary", 100)]
    assert desired(promoted, 1) == ["run"]
    web = await serve(client, worker, "web")
    assert desired(web, 1) == [] and web["status"] == "available"
    assert lanes(web) == [(3, v3, "primary", 100)]
    assert await control.tick() == []
    assert_problem(await client.post(f"{API}/deployments/ghost/canary/promote"), 404)

    # a rollback during a canary: back to the base, nothing else changes
    v4 = await deployable(client, model, b"4")
    await client.patch(url, json={"version": v4})
    back = (await client.post(f"{url}/rollback")).json()
    assert (back["revision"], back["version"]) == (3, v3)
    assert back["canary"]["state"] == "aborted" and back["canary"]["revision"] == 4
    assert back["canary"]["reason"] == "rolled back to revision 3 by request"


async def test_canaries_that_cannot_start_are_refused(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    strategy = {"canary": CANARY}
    url = f"{API}/deployments"
    await deploy(client, model, name="web", version=v1, strategy=strategy)
    # no worker yet: revision 1 is not available
    problem = assert_problem(
        await client.patch(f"{url}/web", json={"version": v2}), 422, "invalid-traffic"
    )
    assert "is pending" in problem["detail"]
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "web")
    problem = assert_problem(
        await client.patch(f"{url}/web", json={"version": v1}), 422, "invalid-traffic"
    )
    assert "a canary needs a version other than the one serving" in problem["detail"]
    assert (await client.patch(f"{url}/web", json={"version": v2})).status_code == 200
    for body in ({"version": v3}, {"replicas": 3}):
        assert_problem(await client.patch(f"{url}/web", json=body), 409, "canary-in-progress")
    split = [{"version": v1, "percent": 50}, {"version": v3, "percent": 50}]
    assert_problem(await client.patch(f"{url}/web", json={"traffic": split}), 409)
    await client.post(f"{url}/web/canary/abort")

    await client.patch(f"{url}/web", json={"traffic": split})
    await serve(client, worker, "web")
    problem = assert_problem(
        await client.patch(f"{url}/web", json={"version": v2, "strategy": strategy}), 422
    )
    assert "split" in problem["detail"]
    # the strategy alone changes no serving process
    before = len(await revisions(client, "web"))
    off = (await client.patch(f"{url}/web", json={"strategy": None})).json()
    assert off["strategy"] is None and len(await revisions(client, "web")) == before


async def test_an_alias_move_starts_a_canary(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    alias = f"{API}/models/{model}/aliases/production"
    await client.put(alias, json={"version": v1})
    await deploy(client, model, name="prod", alias="production", strategy={"canary": CANARY})
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "prod")
    assert (await client.put(alias, json={"version": v2})).status_code == 200
    prod = await get_deployment(client, "prod")
    assert (prod["revision"], prod["version"], prod["alias"]) == (1, v1, "production")
    assert (prod["canary"]["version"], prod["canary"]["state"]) == (v2, "waiting")
    promoted = (await client.post(f"{API}/deployments/prod/canary/promote")).json()
    assert (promoted["version"], promoted["alias"]) == (v2, "production")
    # the alias rolled back: no canary for a rollback, a rolling update at once
    assert (await client.post(f"{alias}/rollback")).status_code == 200
    back = await get_deployment(client, "prod")
    assert (back["revision"], back["version"]) == (3, v1)
    assert back["canary"]["state"] == "promoted"  # the newest canary, kept


async def test_two_controllers_never_take_the_same_step_twice(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    clock = Clock()
    first, _ = controller(sessions, fs_artifacts, settings, clock)
    second, _ = controller(sessions, fs_artifacts, settings, clock)  # a restarted one too
    await _canary_running(client, model, first.tick)
    await count(sessions, "web", 2, clock.advance(1), calls=200)
    clock.advance(60)
    moved = await asyncio.gather(first.tick(), second.tick())
    assert sorted(moved) == [[], ["web"]]
    canary = (await get_deployment(client, "web"))["canary"]
    assert (canary["step"], canary["percent"]) == (1, 50)
    actions = [e["action"] for e in await events_of(client, model)]
    assert actions.count("deployment.canary_step") == 1


async def test_the_control_plane_runs_the_controller(
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    quick = settings.model_copy(update={"canary_tick_s": 0.05, "webhook_poll_s": 0})
    app = create_app(quick, sessions=sessions, store=fs_artifacts)
    told: list[str] = []
    app.state.routes_changed = told.append
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client,
    ):
        await _canary_ready(client, model)
        for _ in range(100):
            if (await get_deployment(client, "web"))["canary"]["state"] == "running":
                break
            await asyncio.sleep(0.05)
        assert (await get_deployment(client, "web"))["canary"]["percent"] == 10
        assert told.count("web") >= 2  # the PATCH, then the controller's step


async def test_a_strategy_given_with_the_version_stays_the_deployments(
    client: httpx.AsyncClient,
    model: str,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    settings: Settings,
) -> None:
    """PATCH {version, strategy} starts a canary and sets the strategy for the next change
    too: shown while the canary runs, kept after an abort."""
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    await deploy(client, model, name="web", version=v1)
    worker = await register_worker(client, cpu_slots=8)
    assert (await serve(client, worker, "web"))["status"] == "available"
    url = f"{API}/deployments/web"
    body = {"version": v2, "strategy": {"canary": CANARY}}
    started = (await client.patch(url, json=body)).json()
    assert started["canary"]["state"] == "waiting"
    assert started["strategy"]["canary"]["steps"] == [10, 50, 100]
    aborted = (await client.post(f"{url}/canary/abort")).json()
    assert aborted["strategy"]["canary"]["steps"] == [10, 50, 100]
    await serve(client, worker, "web")
    again = (await client.patch(url, json={"version": v3})).json()
    assert again["canary"]["state"] == "waiting" and again["canary"]["version"] == v3
