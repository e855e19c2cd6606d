"""The route feed answers promptly: a waiting long poll learns of an alias move that
starts a canary on a deployment following the alias (PUT and one-shot upload) at once, not
on the feed's next poll; on SQLite and Postgres, each test on a database of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from registry.db import SessionFactory
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.conftest import client_for
from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deploy,
    deployable,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API
from tests.registry.traffic_support import serve

ROUTES = f"{API}/gateway/routes"
CANARY = {"steps": [10, 50], "interval_s": 60, "min_calls": 100, "max_error_rate": 0.05}
PROMPT_S = 3.0  # well under the poll below: only a poke answers a long poll this soon


@pytest_asyncio.fixture(loop_scope="session")
async def slow_poll_client(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose feed recomputes by itself once a minute only."""
    slow = settings.model_copy(update={"route_feed_poll_s": 60.0})
    async with client_for(slow, sessions, fs_artifacts) as client:
        yield client


async def cursor_now(client: httpx.AsyncClient) -> str:
    answer = await client.get(ROUTES)
    assert answer.status_code == 200, answer.text
    cursor: str = answer.json()["cursor"]
    return cursor


def canary_lanes(feed: dict[str, Any], name: str) -> list[tuple[int, str]]:
    [route] = [r for r in feed["routes"] if r["deployment"] == name]
    return [(lane["version"], lane["role"]) for lane in route["lanes"] if lane["role"] == "canary"]


async def answered_after(client: httpx.AsyncClient, since: str, change: Any) -> dict[str, Any]:
    """Start a long poll on ``since``, make ``change``, and the poll's answer, which must
    come within ``PROMPT_S``."""
    poll = asyncio.ensure_future(client.get(ROUTES, params={"since": since, "wait_s": 25}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await change()
    start = time.monotonic()
    answer = await asyncio.wait_for(poll, 30)
    took = time.monotonic() - start
    assert answer.status_code == 200, answer.text
    assert took < PROMPT_S, f"the long poll answered {took:.1f} s after the change"
    out: dict[str, Any] = answer.json()
    assert out["cursor"] != since
    return out


async def test_an_alias_move_that_starts_a_canary_answers_waiting_long_polls(
    slow_poll_client: httpx.AsyncClient, model: str
) -> None:
    client = slow_poll_client
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    alias = f"{API}/models/{model}/aliases/production"
    assert (await client.put(alias, json={"version": v1})).status_code == 200
    await deploy(client, model, name="prod", alias="production", strategy={"canary": CANARY})
    worker = await register_worker(client, cpu_slots=8)
    assert (await serve(client, worker, "prod"))["status"] == "available"

    async def move_to_v2() -> None:
        assert (await client.put(alias, json={"version": v2})).status_code == 200

    moved = await answered_after(client, await cursor_now(client), move_to_v2)
    assert canary_lanes(moved, "prod") == [(v2, "canary")]

    async def upload_v3_onto_the_alias() -> None:
        files = [("file", ("model.pt", b"3"))]
        data = {"format": "torchscript", "alias": "production"}
        answer = await client.post(f"{API}/models/{model}/versions:upload", files=files, data=data)
        assert answer.status_code == 201, answer.text

    # the one-shot upload moves the alias too: v2's canary ends, v3's starts
    uploaded = await answered_after(client, moved["cursor"], upload_v3_onto_the_alias)
    assert canary_lanes(uploaded, "prod") == [(v2 + 1, "canary")]
