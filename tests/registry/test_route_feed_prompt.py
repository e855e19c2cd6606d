"""The route feed answers promptly: a waiting long poll learns of an alias move that
starts a canary on a deployment following the alias (PUT and one-shot upload) at once, not
on the feed's next poll; a long poll whose client went away stops waiting (under uvicorn);
a control plane asked to stop (SIGTERM) answers its long polls and exits at once instead of
waiting for them. On SQLite and Postgres, each test on a database of its own; the shutdown
on SQLite, in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from bench.harness import ControlPlane, free_port
from registry.app import create_app
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


async def test_a_long_poll_whose_client_went_away_stops_waiting(
    settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> None:
    app = create_app(settings, sessions=sessions, store=fs_artifacts)
    feed = app.state.route_feed
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(100):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            since = await cursor_now(client)
            poll = asyncio.ensure_future(client.get(ROUTES, params={"since": since, "wait_s": 25}))
            for _ in range(100):
                if feed.polls == 1:
                    break
                await asyncio.sleep(0.05)
            assert feed.polls == 1
            poll.cancel()  # the client closes its connection
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        start = time.monotonic()
        while feed.polls and time.monotonic() - start < 5:
            await asyncio.sleep(0.05)
        assert feed.polls == 0, "the long poll still waits for a client that went away"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@pytest.mark.system
def test_a_control_plane_asked_to_stop_answers_its_long_polls_and_exits(
    tmp_path: Path,
) -> None:
    cp = ControlPlane(
        tmp_path,
        {
            "MODELPLANE_HOME": str(tmp_path / "home"),
            "MODELPLANE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
            "MODELPLANE_STORAGE_URL": str(tmp_path / "artifacts"),
            "MODELPLANE_AUTH_ENABLED": "false",
        },
    )
    try:
        cp.wait_ready()
        since = httpx.get(f"{cp.url}{ROUTES}", timeout=10).json()["cursor"]
        answers: list[httpx.Response] = []

        def long_poll() -> None:
            params = {"since": since, "wait_s": 25}
            answers.append(httpx.get(f"{cp.url}{ROUTES}", params=params, timeout=40))

        waiting = threading.Thread(target=long_poll, daemon=True)
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive(), answers
        start = time.monotonic()
        cp.process.send_signal(signal.SIGTERM)
        cp.process.wait(20)
        took = time.monotonic() - start
        waiting.join(5)
        assert took < 5, f"the control plane took {took:.1f} s to stop\n{cp.log()}"
        [answer] = answers
        assert answer.status_code == 200 and answer.json()["cursor"] == since
    finally:
        cp.stop()
