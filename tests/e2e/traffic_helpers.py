"""Support for the traffic tests: a platform whose processes know the `behave` runtime
(tests/support/behaviour_runtime.py), deployments of behaviour models, and a load generator
that records which version answered each call and when."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bench.harness import auth, push_version
from contract.traffic import VERSION_HEADER
from devstack.seaweed import SeaweedServer
from tests.e2e.conftest import Platform, running_platform
from tests.e2e.deploy_helpers import X, api, deployment, wait_serving
from tests.support import behaviour_runtime

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X[0]}]}


@contextlib.contextmanager
def behaviour_platform(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory, cpu_slots: int
) -> Iterator[Platform]:
    """A control plane (auth on, Postgres, SeaweedFS) and one worker `w1`, all with the
    `behave` runtime installed; stopped by PID afterwards."""
    plugin = behaviour_runtime.install(tmp_path_factory.mktemp("site-packages"))
    workers = {"w1": cpu_slots}
    with running_platform(
        seaweed, tmp_path_factory, workers, extra_path=plugin, label="traffic"
    ) as platform:
        yield platform


def push_behaviours(plane: Platform, model: str, *behaviours: dict[str, float]) -> None:
    """Pushes one `behave` version per dict of `behaviour_runtime.behaviour` keywords
    (`error_rate`, `sleep_ms`), numbered 1, 2, … in order; version N adds N (as the other
    end-to-end tests' models do: `deploy_helpers.wait_serving` relies on it)."""
    for number, kwargs in enumerate(behaviours, start=1):
        files = behaviour_runtime.behaviour(number, **kwargs)
        answer = push_version(
            plane.cp.url,
            model,
            files,
            behaviour_runtime.FORMAT,
            plane.token,
            signature=behaviour_runtime.SIGNATURE,
        )
        assert answer["version"] == number, answer


def deploy(plane: Platform, name: str, version: int, **extra: Any) -> dict[str, Any]:
    """Creates deployment `name` of model `name` (one replica) and waits until it serves."""
    body = {"name": name, "model": name, "version": version, "replicas": 1, **extra}
    answer = api(plane, "POST", "/deployments", json=body)
    assert answer.status_code == 201, answer.text
    return wait_serving(plane, name, version, timeout=90)


def delete(plane: Platform, name: str) -> None:
    """Deletes a deployment (if it exists), freeing its slots for the next test."""
    answer = api(plane, "DELETE", f"/deployments/{name}")
    assert answer.status_code in (200, 202, 204, 404), answer.text


def canary_of(plane: Platform, name: str) -> dict[str, Any]:
    canary: dict[str, Any] | None = deployment(plane, name)["canary"]
    assert canary is not None, f"{name} has no canary"
    return canary


@dataclass
class Call:
    """One call through the stable URL: when it ended (wall clock, as the control plane's
    timestamps on this machine) and what came back."""

    at: float
    status: int  # 0: no HTTP answer
    value: float | None  # y[0] of a 200: x[0] + the answering version's `add`
    latency_s: float
    error: str = ""  # a failed call's answer or exception


@dataclass
class Load:
    """Calls `url` (the stable URL of one deployment's model) at about `rate` calls/s from
    `concurrency` tasks on a loop of its own thread, recording every call; `headers` (a
    version pin) go with each call. Use as a context manager: started on enter, stopped on
    exit."""

    url: str
    token: str | None
    rate: float = 60.0
    concurrency: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    limit: int | None = None  # stop after this many calls

    def __post_init__(self) -> None:
        self._halt = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the load did not stop"

    def wait(self, timeout: float) -> None:
        """Until `limit` calls were made (or `timeout`)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{len(self.calls)} of {self.limit} calls made"

    async def _run(self) -> None:
        headers = {**auth(self.token), **self.headers}
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=10, headers=headers, limits=limits) as http:
            start = time.monotonic()
            issued = 0

            async def one() -> None:
                nonlocal issued
                while not self._halt.is_set() and (self.limit is None or issued < self.limit):
                    slot = start + issued / self.rate  # the call's place in the schedule
                    issued += 1
                    await asyncio.sleep(max(0.0, slot - time.monotonic()))
                    self.calls.append(await self._call(http))
                self._halt.set()

            await asyncio.gather(*(one() for _ in range(self.concurrency)))

    async def _call(self, http: httpx.AsyncClient) -> Call:
        began = time.monotonic()
        try:
            answer = await http.post(self.url, json=BODY)
        except httpx.HTTPError as exc:
            return Call(time.time(), 0, None, time.monotonic() - began, repr(exc))
        took = time.monotonic() - began
        if answer.status_code != 200:
            return Call(time.time(), answer.status_code, None, took, answer.text[:200])
        return Call(time.time(), 200, answer.json()["outputs"][0]["data"][0], took)

    def between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if start <= c.at < end]


def pinned(version: int) -> dict[str, str]:
    return {VERSION_HEADER: str(version)}


def answered_by(calls: list[Call]) -> Counter[int | None]:
    """Calls by the version that answered (version N adds N to x); None: failed."""
    return Counter(None if c.value is None else round(c.value - X[0][0]) for c in calls)


def failures(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.status != 200]


def infer_url(plane: Platform, name: str, version: int | None = None) -> str:
    """The stable URL's infer path, version-addressed when `version` is given."""
    base = f"{plane.cp.url}/serve/{name}/v2/models/{name}"
    return f"{base}/versions/{version}/infer" if version is not None else f"{base}/infer"


def wait_canary(plane: Platform, name: str, states: set[str], timeout: float) -> dict[str, Any]:
    """Polls the deployment's canary until its state is in `states`; fails at once when it
    ended otherwise."""
    deadline = time.monotonic() + timeout
    canary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        canary = canary_of(plane, name)
        if canary["state"] in states:
            return canary
        assert canary["state"] in ("waiting", "running"), canary
        time.sleep(0.1)
    raise AssertionError(f"{name}'s canary not {states}: {canary}\n{plane.logs()}")
