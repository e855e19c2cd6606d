"""Direct mode: the SDK calls a deployment's serving processes itself, not through the stable
URL, balancing by the deployment's route (``GET /api/v1/deployments/{name}/route``).

Unpinned calls are shared between the route's non-shadow lanes by their ``percent`` (a lane
without ready endpoints gives its share to the others), a pinned call (``version=``) goes to
the lanes of that version only, and calls take a lane's endpoints in turn. A refused
connection or a 503 (an endpoint gone or draining) refreshes the route and tries once more
elsewhere: nothing of an answer has reached the caller by then. Shadows are the gateway's
job: direct calls are never mirrored, and the gateway's counts (the canary's verdict) do
not see them.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from client.errors import ConnectionFailed, NotFound, from_response
from client.transport import API, Transport
from contract.http import describe, make_client
from contract.traffic import Lane, LaneRole, Route

ROUTE_TTL_S = 10.0  # a split or a rollout is picked up within this, or at the first refusal
USER_AGENT = "modelplane-sdk-direct"


class DirectRouter:
    """Routes of the deployments this client calls, cached, and one pooled HTTP client for
    their serving processes (which take no API key: it is never sent to them). Safe to
    share between threads."""

    def __init__(self, transport: Transport, *, timeout: float, ttl: float = ROUTE_TTL_S) -> None:
        self._transport = transport
        self._ttl = ttl
        self._routes: dict[str, tuple[float, Route]] = {}
        self._turns: dict[tuple[str, int], Iterator[int]] = {}
        self._lock = threading.Lock()
        self.http = make_client(
            user_agent=USER_AGENT, timeout=timeout, max_connections=256, max_keepalive=128
        )

    def close(self) -> None:
        self.http.close()

    def forget(self, deployment: str) -> None:
        with self._lock:
            self._routes.pop(deployment, None)

    def route(self, deployment: str, *, refresh: bool = False) -> Route:
        """The deployment's route, from the cache unless stale or ``refresh``."""
        now = time.monotonic()
        with self._lock:
            cached = self._routes.get(deployment)
        if cached is not None and not refresh and now - cached[0] < self._ttl:
            return cached[1]
        found = Route.model_validate(
            self._transport.json("GET", f"{API}/deployments/{deployment}/route")
        )
        with self._lock:
            self._routes[deployment] = (now, found)
        return found

    def pick(self, route: Route, version: int | None, avoid: frozenset[str] = frozenset()) -> str:
        """An endpoint URL: a lane drawn by share (of ``version`` only, if given), then the
        lane's endpoints in turn, skipping ``avoid`` where another is left."""
        lanes = [
            lane for lane in route.lanes if lane.role is not LaneRole.shadow and lane.endpoints
        ]
        if version is not None:
            lanes = [lane for lane in lanes if lane.version == version]
            if not lanes:
                served = ", ".join(f"v{v}" for v in route.versions()) or "none"
                raise NotFound(
                    f"deployment {route.deployment!r} does not serve version {version} "
                    f"(served: {served})"
                )
        if not lanes:
            raise ConnectionFailed(
                f"deployment {route.deployment!r} has no ready endpoint to call directly"
            )
        lane = _draw(lanes)
        urls = [u for u in lane.endpoints if u not in avoid] or lane.endpoints
        return urls[self._turn(route.deployment, lane) % len(urls)].rstrip("/")

    def _turn(self, deployment: str, lane: Lane) -> int:
        key = (deployment, lane.revision)
        with self._lock:
            turns = self._turns.setdefault(key, itertools.count())
        return next(turns)

    def request(
        self, deployment: str, method: str, path: str, *, version: int | None = None, **kw: Any
    ) -> httpx.Response:
        """One call to ``path`` (a protocol path such as ``/v2/models/m/infer``) on an
        endpoint of the deployment: the answer if 2xx, else the mapped error."""
        return self._attempt(
            deployment, version, lambda url: self.http.request(method, url + path, **kw)
        )

    def _attempt(
        self,
        deployment: str,
        version: int | None,
        call: Callable[[str], httpx.Response],
    ) -> httpx.Response:
        first = self.pick(self.route(deployment), version)
        answer = _try(first, call, last=False)
        if answer is not None:
            return answer
        route = self.route(deployment, refresh=True)
        answer = _try(self.pick(route, version, frozenset({first})), call, last=True)
        assert answer is not None  # the last try answers or raises
        return answer


def _try(url: str, call: Callable[[str], httpx.Response], *, last: bool) -> httpx.Response | None:
    """The answer if 2xx; ``None`` when another endpoint is worth a try (a refused
    connection, or a 503: not ready or draining) and this is not the ``last`` try; else
    the mapped error."""
    try:
        answer = call(url)
    except httpx.ConnectError as exc:
        if not last:
            return None
        raise ConnectionFailed(f"cannot reach {url}: {describe(exc)}") from exc
    except httpx.TransportError as exc:  # sent, maybe answered in part: never repeated
        raise ConnectionFailed(f"call to {url} failed: {describe(exc)}") from exc
    if answer.is_success:
        return answer
    if answer.status_code == 503 and not last:
        return None
    raise from_response(answer)


def _draw(lanes: list[Lane]) -> Lane:
    """A lane at random by share; equal chances when no lane has a share (a pin to a
    version that takes only pinned calls)."""
    weights = [max(lane.percent, 0.0) for lane in lanes]
    if sum(weights) <= 0:
        return random.choice(lanes)
    return random.choices(lanes, weights=weights)[0]
