"""The route table: deployment name → how its calls are shared between its live revisions.

Replaced whole by each `RouteFeed` (`RouteTable.apply`); each `Route` is compiled once into
a `Plan` (cumulative weights over the lanes that take unpinned calls, lanes by version, the
shadow lane) so choosing an endpoint costs a random number, a bisect and a counter.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import re
from collections.abc import Callable, Iterable

from contract.traffic import Lane, LaneRole, Route, RouteFeed

# The version in a version-addressed path (after ``/serve/{d}``): the v2 protocol, TF
# Serving's REST API, TorchServe's inference API.
_VERSIONED = re.compile(
    r"/(?:v2/models/[^/]+/versions/(\d+)(?:/|$)"
    r"|v1/models/[^/]+/versions/(\d+)(?:[/:]|$)"
    r"|predictions/[^/]+/(\d+)/?$)"
)


def path_version(path: str) -> int | None:
    """The version a path addresses, e.g. ``/v2/models/m/versions/8/infer`` → 8."""
    if "/versions/" not in path and not path.startswith("/predictions/"):
        return None
    match = _VERSIONED.match(path)
    if match is None:
        return None
    return int(next(g for g in match.groups() if g is not None))


class Pool:
    """Endpoints of one revision (or of one version's lanes), taken round robin."""

    __slots__ = ("revision", "version", "urls", "_turn")

    def __init__(self, revision: int, version: int, urls: list[str]) -> None:
        self.revision = revision
        self.version = version
        self.urls = urls
        self._turn = itertools.count()

    def order(self) -> list[str]:
        """Every endpoint, starting at the next one in turn (the rest: retries)."""
        urls = self.urls
        if len(urls) <= 1:
            return urls
        start = next(self._turn) % len(urls)
        return urls[start:] + urls[:start]

    def url(self) -> str:
        return self.urls[next(self._turn) % len(self.urls)]


class NoVersion(LookupError):
    """A pinned version the deployment does not serve (404)."""


class Plan:
    """One deployment's route, compiled for choosing."""

    __slots__ = ("route", "name", "model", "pools", "_cumulative", "_total", "_by_version",
                 "shadow", "shadow_share", "any_endpoint")  # fmt: skip

    def __init__(self, route: Route) -> None:
        self.route = route
        self.name = route.deployment
        self.model = route.model
        live = [lane for lane in route.lanes if lane.role is not LaneRole.shadow]
        # a lane at 0% (a canary not started) takes no unpinned call, even when alone
        weighted = [lane for lane in live if lane.endpoints and lane.percent > 0]
        self.pools = [_pool(lane) for lane in weighted]
        self._cumulative = list(itertools.accumulate(lane.percent for lane in weighted))
        self._total = self._cumulative[-1] if self._cumulative else 0.0
        by_version: dict[int, list[Lane]] = {}
        for lane in route.lanes:
            if lane.endpoints:
                by_version.setdefault(lane.version, []).append(lane)
        self._by_version = {
            version: _pool(lanes[0], [u for lane in lanes for u in lane.endpoints])
            for version, lanes in by_version.items()
        }
        shadows = [lane for lane in route.lanes if lane.role is LaneRole.shadow]
        shadow = shadows[0] if shadows and shadows[0].endpoints else None
        self.shadow = _pool(shadow) if shadow is not None else None
        self.shadow_share = shadow.percent / 100 if shadow is not None else 0.0
        self.any_endpoint = bool(self._by_version)

    def choose(self, version: int | None = None) -> tuple[Pool | None, list[Pool]]:
        """The pool a call goes to and the others to fall back on (unpinned calls only),
        or ``(None, [])`` when no endpoint is ready. `NoVersion` for a version not served."""
        if version is not None:
            pool = self._by_version.get(version)
            if pool is None:
                served = ", ".join(map(str, sorted(self._by_version))) or "none"
                raise NoVersion(
                    f"deployment {self.name!r} serves no version {version}; it serves {served}"
                )
            return pool, []
        pools = self.pools
        if len(pools) <= 1:
            return (pools[0], []) if pools else (None, [])
        i = bisect.bisect_right(self._cumulative, random.random() * self._total)
        i = min(i, len(pools) - 1)
        return pools[i], [p for p in pools if p is not pools[i]]

    def mirror(self) -> Pool | None:
        """The shadow pool when this call is one of the mirrored share, else ``None``."""
        shadow = self.shadow
        if shadow is None or random.random() >= self.shadow_share:
            return None
        return shadow


def _pool(lane: Lane, urls: list[str] | None = None) -> Pool:
    return Pool(lane.revision, lane.version, [u.rstrip("/") for u in (urls or lane.endpoints)])


class RouteTable:
    """Deployment name → `Plan`, replaced whole by `apply`."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._plans: dict[str, Plan] = {r.deployment: Plan(r) for r in routes}
        self.auth = False
        self._next: asyncio.Future[None] | None = None  # resolved by the next `apply`
        self.listeners: list[Callable[[], None]] = []  # called after each `apply`

    def apply(self, feed: RouteFeed) -> None:
        self._plans = {route.deployment: Plan(route) for route in feed.routes}
        self.auth = feed.auth
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None
        for listener in self.listeners:
            listener()

    async def changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next table; whether it came."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._next), timeout)
        except TimeoutError:
            return False
        return True

    def lookup(self, name: str) -> Plan | None:
        return self._plans.get(name)

    def routes(self) -> list[Route]:
        return [plan.route for plan in self._plans.values()]

    def __len__(self) -> int:
        return len(self._plans)
