"""Helpers for the traffic and canary tests: a worker that makes replicas ready over HTTP,
gateway counts added through ``TrafficRepository`` (our code, as the report ingestion does),
a clock the test moves, and the canary controller on it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from contract.traffic import BUCKETS, RevisionCounts, bucket
from registry.db import SessionFactory, utcnow
from registry.repositories.deployments import DeploymentRepository
from registry.repositories.events import Actor
from registry.repositories.traffic import TrafficRepository
from registry.services.canary import CanaryController
from registry.services.context import Context
from registry.settings import Settings
from storage import ArtifactStore
from tests.registry.deploying import announce, get_deployment, heartbeat
from tests.registry.helpers import API


class Clock:
    """Now, as the controller sees it; the test moves it on."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def catch_up(self) -> datetime:
        """Now is at least the real time: for what the API stamped with the real clock
        (a canary's ``started_at``) after the test clock was made."""
        self.now = max(self.now, utcnow())
        return self.now


def controller(
    sessions: SessionFactory, store: ArtifactStore, settings: Settings, clock: Clock
) -> tuple[CanaryController, list[str]]:
    """A controller on the test's database and clock, and the names it said changed."""
    changed: list[str] = []
    ctx = Context(sessions, store, settings, Actor(name="canary"))
    return CanaryController(ctx, changed.append, clock=clock), changed


async def serve(
    client: httpx.AsyncClient, worker: str, name: str, revision: int | None = None
) -> dict[str, Any]:
    """The worker claims what it can, every claimed replica (of ``revision``) that should
    run announces its endpoint ready, and those asked to stop stop; the deployment after."""
    await heartbeat(client, worker)
    for replica in (await get_deployment(client, name))["observed"]["replicas"]:
        wanted = revision is None or replica["revision"] == revision
        mine = replica["worker"] == worker
        if wanted and mine and replica["desired"] == "run" and replica["state"] != "ready":
            await announce(client, replica["id"])
    replicas = (await get_deployment(client, name))["observed"]["replicas"]
    stopped: dict[str, str | tuple[str, str]] = {
        r["id"]: "stopped" for r in replicas if r["worker"] == worker and r["desired"] == "stop"
    }
    if stopped:
        await heartbeat(client, worker, stopped)
    return await get_deployment(client, name)


async def count(
    sessions: SessionFactory,
    name: str,
    revision: int,
    ended_at: datetime,
    *,
    calls: int,
    errors: int = 0,
    ms: float = 20.0,
) -> None:
    """One gateway report for ``revision``: ``calls`` calls of ``ms`` ms, ``errors`` failed,
    ending at ``ended_at``."""
    latency = [0] * BUCKETS
    latency[bucket(ms)] = calls
    counts = RevisionCounts(
        deployment=name, revision=revision, calls=calls, errors=errors, latency=latency
    )
    async with sessions.begin() as session:
        deployment, _ = await DeploymentRepository(session).get(name)
        started = ended_at - timedelta(seconds=1)
        await TrafficRepository(session).add(deployment.id, "g1", started, ended_at, counts)


def lanes(deployment: dict[str, Any]) -> list[tuple[int, int, str, float]]:
    return [(x["revision"], x["version"], x["role"], x["percent"]) for x in deployment["lanes"]]


def desired(deployment: dict[str, Any], revision: int) -> list[str]:
    return [r["desired"] for r in deployment["observed"]["replicas"] if r["revision"] == revision]


async def revisions(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    page = (await client.get(f"{API}/deployments/{name}/revisions")).json()
    items: list[dict[str, Any]] = page["items"]
    return items
