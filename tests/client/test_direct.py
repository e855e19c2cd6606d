"""SDK direct mode against `modelplane up` (control plane, its worker, real serving processes):
calls go straight to the serving processes by the deployment's route, pins pick a version's
endpoints, and a killed endpoint costs a refresh and a second try, never a failed call."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import wait_for
from client import Client, NotFound
from contract.traffic import Route
from tests.client.conftest import Up, unique
from tests.client.test_sdk import Mlp, delete_and_wait

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def expected(module: Mlp) -> np.ndarray:
    return module(torch.from_numpy(X)).detach().numpy()  # type: ignore[no-any-return]


def samples(url: str, family: str, token: str | None = None) -> list[tuple[dict[str, str], float]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return [
        (s.labels, s.value)
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name.endswith(("_total", "_count"))
    ]


def served_calls(endpoint: str) -> float:
    """Infer calls a serving process answered, by its own metrics."""
    return sum(v for labels, v in samples(endpoint, "modelplane_inference_requests"))


def stable_url_calls(up: Up, path: str = "/serve/{deployment}", method: str = "POST") -> float:
    """Calls the control plane's process answered on a route template (the embedded
    gateway's stable URL counts as one)."""
    family = "modelplane_http_request_duration_seconds"
    return sum(
        v
        for labels, v in samples(up.url, family, up.token)
        if labels.get("route") == path and labels.get("method") == method
    )


def deploy_ready(sdk: Client, name: str, up: Up, replicas: int = 1, **kw: Any) -> Route:
    """Deployed, and its route lists an endpoint per replica of every lane."""
    sdk.deploy(name, replicas=replicas, **kw)
    sdk.wait_ready(name, timeout=120)

    def routed() -> Route | None:
        route = sdk.route(name)
        lanes = [lane for lane in route.lanes if lane.role != "shadow"]
        full = lanes and all(len(lane.endpoints) >= replicas for lane in lanes)
        return route if full else None

    route: Route = wait_for(f"{name}'s route", routed, 60, up.logs)
    return route


def test_direct_calls_reach_the_serving_process_not_the_stable_url(up: Up) -> None:
    name = unique("direct")
    module = Mlp(1)
    with up.client() as sdk:
        v = sdk.push_module(name, module, torch.zeros(2, 4))
        try:
            route = deploy_ready(sdk, name, up, version=v.version)
            [lane] = route.lanes
            [endpoint] = lane.endpoints
            before = served_calls(endpoint), stable_url_calls(up)
            with up.client(direct=True) as direct:
                for _ in range(20):
                    np.testing.assert_allclose(
                        direct.infer(name, X)["output0"], expected(module), rtol=1e-5
                    )
                # one call may still take the stable URL
                sdk.infer(name, X, direct=False)
            assert served_calls(endpoint) - before[0] == 21
            assert stable_url_calls(up) - before[1] == 1
        finally:
            delete_and_wait(sdk, name, up)


def test_a_pin_reaches_only_its_version_and_an_unknown_one_names_the_served(up: Up) -> None:
    name = unique("pinned")
    first, second = Mlp(1), Mlp(2)
    with up.client() as sdk:
        sdk.push_module(name, first, torch.zeros(2, 4))
        sdk.push_module(name, second, torch.zeros(2, 4))
        try:
            route = deploy_ready(sdk, name, up, traffic={1: 70, 2: 30})
            assert sorted((lane.version, lane.percent) for lane in route.lanes) == [
                (1, 70),
                (2, 30),
            ]
            with up.client(direct=True) as direct:
                for version, module in ((1, first), (2, second)):
                    for _ in range(10):
                        got = direct.infer(name, X, version=version)["output0"]
                        np.testing.assert_allclose(got, expected(module), rtol=1e-5)
                with pytest.raises(NotFound, match=r"version 7 \(served: v1, v2\)"):
                    direct.infer(name, X, version=7)
            # the same pin through the stable URL: the Modelplane-Version header
            for _ in range(10):
                got = sdk.infer(name, X, version=2)["output0"]
                np.testing.assert_allclose(got, expected(second), rtol=1e-5)
            with up.client(direct=True) as direct:
                seen = Counter(
                    1 if np.allclose(direct.infer(name, X)["output0"], expected(first)) else 2
                    for _ in range(400)
                )
            assert abs(seen[1] / 400 - 0.7) < 0.08, seen  # ±4 standard deviations
        finally:
            delete_and_wait(sdk, name, up)


def serving_pid(up: Up, endpoint: str) -> int:
    """The serving process behind an endpoint, from the embedded worker's log."""
    port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    found = re.findall(rf"\(pid (\d+), port {port},", up.logs())
    assert found, f"no serving process on port {port}\n{up.logs()[-3000:]}"
    return int(found[-1])


def test_a_killed_endpoint_costs_a_refresh_and_a_retry_not_a_failed_call(up: Up) -> None:
    name = unique("killed")
    module = Mlp(3)
    with up.client() as sdk:
        v = sdk.push_module(name, module, torch.zeros(2, 4))
        try:
            route = deploy_ready(sdk, name, up, version=v.version, replicas=2)
            [lane] = route.lanes
            victim, survivor = lane.endpoints
            with up.client(direct=True) as direct:
                direct.infer(name, X)  # the route is cached from here on
                fetched = stable_url_calls(up, "/api/v1/deployments/{name}/route", "GET")
                os.kill(serving_pid(up, victim), signal.SIGKILL)
                before = served_calls(survivor)
                for _ in range(10):
                    np.testing.assert_allclose(
                        direct.infer(name, X)["output0"], expected(module), rtol=1e-5
                    )
            refetched = stable_url_calls(up, "/api/v1/deployments/{name}/route", "GET")
            assert refetched > fetched  # the refusal refreshed the route
            assert served_calls(survivor) - before >= 5  # round robin: the victim's turns too
        finally:
            delete_and_wait(sdk, name, up)
