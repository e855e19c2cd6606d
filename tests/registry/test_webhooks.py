"""Webhooks: subscriptions, signed deliveries to a real HTTP receiver, retries, the log."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from registry.app import create_app
from registry.db import SessionFactory
from registry.services.webhooks import SIGNATURE_HEADER, WebhookDispatcher, verify
from registry.settings import Settings
from registry.tables import OutboxRow
from storage import FileSystemArtifactStore
from tests.registry.conftest import client_for
from tests.registry.helpers import API, assert_problem, create_version, ready_version


@dataclass
class Receiver:
    """A local HTTP server that checks each POST's signature, answers 500 to the first
    ``fail_first`` calls of each delivery, and records the rest."""

    secret: str = ""
    fail_first: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        signed = verify(self.secret, headers.get(SIGNATURE_HEADER, ""), body)
        self.calls.append({"headers": headers, "signed": signed})
        if not signed:
            return 401
        delivery = headers["Modelplane-Delivery"]
        tries = sum(1 for c in self.calls if c["headers"]["Modelplane-Delivery"] == delivery)
        if tries <= self.fail_first:
            return 500
        self.received.append({"headers": headers, "body": json.loads(body)})
        return 204


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.handle(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    # a short poll: `shutdown` waits for the loop to notice (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"webhook_backoff_s": 0.05, "webhook_max_attempts": 4, "webhook_poll_s": 0.05}
    )


@pytest_asyncio.fixture(loop_scope="session")
async def hooks(
    hook_settings: Settings, sessions: SessionFactory, fs_artifacts: FileSystemArtifactStore
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(hook_settings, sessions, fs_artifacts) as c:
        yield c


async def subscribe(client: httpx.AsyncClient, receiver: Receiver, events: list[str]) -> str:
    answer = await client.post(f"{API}/webhooks", json={"url": receiver.url, "events": events})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["secret"].startswith("whsec_") and body["events"] == sorted(events)
    receiver.secret = body["secret"]
    return str(body["id"])


async def dispatch_until(dispatcher: WebhookDispatcher, done: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "deliveries did not arrive"
        await dispatcher.run_once()
        await asyncio.sleep(0.05)


async def test_events_are_signed_delivered_and_retried(
    hooks: httpx.AsyncClient,
    hook_settings: Settings,
    sessions: SessionFactory,
    receiver: Receiver,
    model: str,
) -> None:
    hook = await subscribe(hooks, receiver, ["version.ready", "alias.moved"])
    receiver.fail_first = 2  # every delivery fails twice, then gets through
    number = await ready_version(hooks, model, {"w.bin": os.urandom(64)})
    moved = await hooks.put(
        f"{API}/models/{model}/aliases/production",
        json={"version": number},
        headers={"X-Request-ID": "hook-req-1"},
    )
    assert moved.status_code == 200
    await create_version(hooks, model, {"x.bin": os.urandom(8)})  # pending: not subscribed

    dispatcher = WebhookDispatcher(sessions, hook_settings)
    try:
        await dispatch_until(dispatcher, lambda: len(mine(receiver, model)) >= 2)
    finally:
        await dispatcher.close()

    assert all(c["signed"] for c in receiver.calls)
    # only what happened after the subscription (older outbox rows exist on Postgres)
    assert {r["body"]["model"] for r in receiver.received} == {model}
    got = {r["body"]["type"]: r for r in mine(receiver, model)}
    assert set(got) == {"version.ready", "alias.moved"}
    alias = got["alias.moved"]
    assert alias["headers"]["Modelplane-Event"] == "alias.moved"
    assert alias["body"]["after"] == number and alias["body"]["request_id"] == "hook-req-1"
    assert alias["body"]["target"] == "alias:production" and alias["body"]["model"] == model

    log = (await hooks.get(f"{API}/webhooks/{hook}/deliveries")).json()["items"]
    for delivery in log:
        if delivery["payload"]["model"] == model:
            # two refusals, then through (one more if a loaded machine timed a call out)
            assert delivery["status"] == "delivered" and delivery["attempts"] >= 3
            assert delivery["last_status_code"] == 204 and delivery["delivered_at"]
            calls = [
                c for c in receiver.calls
                if c["headers"]["Modelplane-Delivery"] == str(delivery["id"])
            ]  # fmt: skip
            assert len(calls) >= 3 and len(calls) <= delivery["attempts"]
    assert (await hooks.delete(f"{API}/webhooks/{hook}")).status_code == 204


def mine(receiver: Receiver, model: str) -> list[dict[str, Any]]:
    return [r for r in receiver.received if r["body"].get("model") == model]


async def test_a_receiver_that_keeps_failing_ends_failed_with_its_error(
    hooks: httpx.AsyncClient,
    hook_settings: Settings,
    sessions: SessionFactory,
    receiver: Receiver,
    model: str,
) -> None:
    hook = await subscribe(hooks, receiver, ["version.ready"])
    receiver.fail_first = 100
    await ready_version(hooks, model, {"w.bin": os.urandom(64)})
    url = f"{API}/webhooks/{hook}/deliveries"

    async def log() -> list[dict[str, Any]]:
        return list((await hooks.get(url)).json()["items"])

    dispatcher = WebhookDispatcher(sessions, hook_settings)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not (items := await log()) or items[0]["status"] == "pending":
            assert asyncio.get_running_loop().time() < deadline, items
            await dispatcher.run_once()
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.close()
    assert items[0]["status"] == "failed" and items[0]["attempts"] == 4
    assert items[0]["last_status_code"] == 500 and "HTTP 500" in items[0]["last_error"]
    assert items[0]["next_attempt_at"] is None
    assert (await hooks.delete(f"{API}/webhooks/{hook}")).status_code == 204


async def test_the_request_never_waits_for_the_receiver(
    hooks: httpx.AsyncClient, sessions: SessionFactory, model: str
) -> None:
    """No receiver listens: the change answers at once and its event waits in the outbox
    (written in the same transaction as the audit event)."""
    dead = "http://127.0.0.1:9/never"
    answer = await hooks.post(f"{API}/webhooks", json={"url": dead, "events": ["alias.moved"]})
    hook = answer.json()["id"]
    number = await ready_version(hooks, model, {"w.bin": os.urandom(32)})
    async with sessions() as session:
        before = await session.scalar(select(func.count()).select_from(OutboxRow))
    moved = await hooks.put(f"{API}/models/{model}/aliases/live", json={"version": number})
    assert moved.status_code == 200
    async with sessions() as session:
        after = await session.scalar(select(func.count()).select_from(OutboxRow))
        assert (after or 0) >= (before or 0) + 1
    assert (await hooks.delete(f"{API}/webhooks/{hook}")).status_code == 204


async def test_the_dispatcher_runs_in_the_app_lifespan(
    hook_settings: Settings,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    receiver: Receiver,
    model: str,
) -> None:
    app = create_app(hook_settings, sessions=sessions, store=fs_artifacts)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        hook = await subscribe(client, receiver, ["version.ready"])
        await ready_version(client, model, {"w.bin": os.urandom(16)})
        for _ in range(300):
            if mine(receiver, model):
                break
            await asyncio.sleep(0.1)
        assert mine(receiver, model), receiver.calls
        assert (await client.delete(f"{API}/webhooks/{hook}")).status_code == 204


async def test_webhook_bad_input_and_missing_are_problems(hooks: httpx.AsyncClient) -> None:
    url = f"{API}/webhooks"
    for body in (
        {"url": "ftp://x/y", "events": ["alias.moved"]},
        {"url": "http://x/y", "events": ["model.exploded"]},
        {"url": "http://x/y", "events": []},
        {"url": "http://x/y", "events": ["alias.moved"], "secret": "short"},
    ):
        assert_problem(await hooks.post(url, json=body), 422, "validation-error")
    missing = "0" * 32
    assert_problem(await hooks.get(f"{url}/{missing}"), 404, "webhook-not-found")
    assert_problem(await hooks.delete(f"{url}/{missing}"), 404, "webhook-not-found")
    assert_problem(await hooks.get(f"{url}/{missing}/deliveries"), 404, "webhook-not-found")
    assert_problem(await hooks.get(f"{url}/not-an-id"), 422, "validation-error")
    created = await hooks.post(
        url,
        json={"url": "https://example.test/h", "events": ["rollout.failed"], "secret": "s" * 20},
    )
    hook = created.json()
    assert created.status_code == 201 and hook["secret"] == "s" * 20
    listed = (await hooks.get(url, params={"limit": 1000})).json()["items"]
    shown = next(h for h in listed if h["id"] == hook["id"])
    assert "secret" not in shown and shown["events"] == ["rollout.failed"]
    assert (await hooks.delete(f"{url}/{hook['id']}")).status_code == 204
    assert_problem(await hooks.get(f"{url}/{hook['id']}"), 404, "webhook-not-found")


async def test_finished_deliveries_are_pruned_after_the_retention(
    hooks: httpx.AsyncClient,
    hook_settings: Settings,
    sessions: SessionFactory,
    receiver: Receiver,
    model: str,
) -> None:
    hook = await subscribe(hooks, receiver, ["version.ready"])
    await ready_version(hooks, model, {"w.bin": os.urandom(8)})
    url = f"{API}/webhooks/{hook}/deliveries"
    dispatcher = WebhookDispatcher(sessions, hook_settings)
    try:
        await dispatch_until(dispatcher, lambda: bool(mine(receiver, model)))
        assert (await dispatcher.prune()) == 0  # within the retention: kept
    finally:
        await dispatcher.close()
    assert len((await hooks.get(url)).json()["items"]) == 1
    await asyncio.sleep(0.05)
    short = WebhookDispatcher(
        sessions, hook_settings.model_copy(update={"webhook_retention_s": 0.01})
    )
    assert (await short.prune()) >= 1
    await short.close()
    assert (await hooks.get(url)).json()["items"] == []
    assert (await hooks.delete(f"{API}/webhooks/{hook}")).status_code == 204
