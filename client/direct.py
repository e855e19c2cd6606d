"""Direct mode: the SDK calls a deployment's serving processes itself, not through the stable
URL, balancing by the deployment's route (``GET /api/v1/deployments/{name}/route``).

Unpinned calls are shared between the route's non-shadow lanes by their ``percent`` (a lane
without ready endpoints gives its share to the others), a pinned call (``version=``) goes to
the lanes of that version only, and calls take a lane's endpoints in turn. A refused
connection or a 503 (an endpoint gone or draining), and for an idempotent call a connection
that broke before an answer, refresh the route and try once more elsewhere: nothing of an
answer has reached the caller by then. Shadows are the gateway's job: direct calls are
never mirrored, and the gateway's counts (the canary's verdict) do not see them.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx

from client.errors import ConnectionFailed, NotFound, from_response
from client.transport import API, Transport
from contract.http import IDEMPOTENT, describe, make_client
from contract.traffic import Lane, LaneRole, Route

ROUTE_TTL_S = 10.0  # a split or a rollout is picked up within this, or at the first refusal
USER_AGENT = "modelplane-sdk-direct"


class Lanes:
    """Lanes to draw a call's endpoint from: a lane by share (equal chances when none has a
    share: a pin to a version that takes only pinned calls), then its endpoints in turn."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = lanes
        self.urls = [[u.rstrip("/") for u in lane.endpoints] for lane in lanes]
        self.bounds = list(itertools.accumulate(max(lane.percent, 0.0) for lane in lanes))
        self.turns = [itertools.count() for _ in lanes]  # next() is atomic under the GIL

    def pick(self, avoid: frozenset[str]) -> str:
        total = self.bounds[-1]
        i = bisect.bisect(self.bounds, random.random() * total) if total > 0 else -1
        if not 0 <= i < len(self.lanes):  # no shares, or the float edge at the top
            i = random.randrange(len(self.lanes))
        urls = [u for u in self.urls[i] if u not in avoid] or self.urls[i]
        return urls[next(self.turns[i]) % len(urls)]


class Plan:
    """A route as direct mode draws from it, built once per fetch."""

    def __init__(self, route: Route, fetched: float) -> None:
        self.route, self.fetched = route, fetched
        taking = [
            lane for lane in route.lanes if lane.role is not LaneRole.shadow and lane.endpoints
        ]
        self.unpinned = Lanes(taking) if taking else None
        versions = sorted({lane.version for lane in taking})
        self.pinned = {v: Lanes([x for x in taking if x.version == v]) for v in versions}

    def pick(self, version: int | None, avoid: frozenset[str] = frozenset()) -> str:
        """An endpoint URL, of ``version`` only if given, skipping ``avoid`` where another
        endpoint of the drawn lane is left."""
        name = self.route.deployment
        if version is None:
            if self.unpinned is None:
                raise ConnectionFailed(f"deployment {name!r} has no ready endpoint to call")
            return self.unpinned.pick(avoid)
        if version not in self.pinned:
            served = ", ".join(f"v{v}" for v in self.pinned) or "none"
            raise NotFound(
                f"deployment {name!r} does not serve version {version} (served: {served})"
            )
        return self.pinned[version].pick(avoid)


class DirectRouter:
    """Routes of the deployments this client calls, cached, and one pooled HTTP client for
    their serving processes (which take no API key: it is never sent to them). Safe to
    share between threads."""

    def __init__(self, transport: Transport, *, timeout: float, ttl: float = ROUTE_TTL_S) -> None:
        self._transport = transport
        self._ttl = ttl
        self._plans: dict[str, Plan] = {}  # replaced whole, read without a lock
        self.http = make_client(
            user_agent=USER_AGENT, timeout=timeout, max_connections=256, max_keepalive=128
        )

    def close(self) -> None:
        self.http.close()

    def forget(self, deployment: str) -> None:
        self._plans.pop(deployment, None)

    def plan(self, deployment: str, *, refresh: bool = False) -> Plan:
        """The deployment's route, from the cache unless stale or ``refresh``."""
        now = time.monotonic()
        cached = self._plans.get(deployment)
        if cached is not None and not refresh and now - cached.fetched < self._ttl:
            return cached
        route = Route.model_validate(
            self._transport.json("GET", f"{API}/deployments/{deployment}/route")
        )
        plan = self._plans[deployment] = Plan(route, now)
        return plan

    def request(
        self,
        deployment: str,
        method: str,
        path: str,
        *,
        version: int | None = None,
        idempotent: bool | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One call to ``path`` (a protocol path such as ``/v2/models/m/infer``) on an
        endpoint of the deployment: the answer if 2xx, else the mapped error. A call that
        is ``idempotent`` (default: by its method) is also tried again elsewhere when its
        connection broke before an answer (a process killed under a kept-alive one)."""
        safe = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        call = partial(self.http.request, method, **kw)
        first = self.plan(deployment).pick(version)
        answer = _try(call, first + path, safe, last=False)
        if answer is not None:
            return answer
        plan = self.plan(deployment, refresh=True)
        answer = _try(call, plan.pick(version, frozenset({first})) + path, safe, last=True)
        assert answer is not None  # the last try answers or raises
        return answer


def _try(
    call: Callable[[str], httpx.Response], url: str, idempotent: bool, *, last: bool
) -> httpx.Response | None:
    """The answer if 2xx; ``None`` when another endpoint is worth a try and this is not
    the ``last`` try: a refused connection, a 503 (not ready, draining), or for an
    idempotent call a connection that broke with no answer; else the mapped error."""
    try:
        answer = call(url)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if not last:
            return None
        raise ConnectionFailed(f"cannot reach {url}: {describe(exc)}") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        if idempotent and not last:
            return None
        raise ConnectionFailed(f"call to {url} failed: {describe(exc)}") from exc
    except httpx.TransportError as exc:  # a timeout: the model may be busy; not repeated
        raise ConnectionFailed(f"call to {url} failed: {describe(exc)}") from exc
    if answer.is_success:
        return answer
    if answer.status_code == 503 and not last:
        return None
    raise from_response(answer)
