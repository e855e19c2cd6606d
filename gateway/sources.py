"""The transition from the ``EndpointSource`` the embedded control plane used to give the
stable URL: a deployment's ready endpoint URLs (``None``: no such deployment), asked at most
once per ``cache_s`` per deployment (concurrent callers share the answer), seen as a route of
one lane (revision 0) so the stable URL forwards it like any other."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from contract.traffic import Lane, LaneRole, Route
from gateway.routes import Plan

log = logging.getLogger("modelplane.gateway")

EndpointSource: TypeAlias = Callable[[str], Awaitable[list[str] | None]]
"""A deployment's ready endpoint URLs, or ``None`` when there is no such deployment."""
MAX_CACHED = 10_000


class SourceRoutes:
    """`Plan`s read from an `EndpointSource`, cached for ``cache_s``."""

    def __init__(self, source: EndpointSource, cache_s: float) -> None:
        self._source = source
        self._ttl = cache_s
        self._cache: dict[str, tuple[Plan | None, float]] = {}
        self._loading: dict[str, asyncio.Future[Plan | None]] = {}

    def forget(self, deployment: str) -> None:
        self._cache.pop(deployment, None)

    async def plan(self, name: str) -> Plan | None:
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name, cached[0] if cached else None))
            self._loading[name] = loading
            loading.add_done_callback(lambda _: self._loading.pop(name, None))
        try:
            return await asyncio.shield(loading)
        except Exception as exc:  # the source is away: serve what we knew, if anything
            log.warning("endpoints of %r unreadable: %r", name, exc)
            return cached[0] if cached else None

    async def _load(self, name: str, old: Plan | None) -> Plan | None:
        urls = await self._source(name)
        plan = None
        if urls is not None:
            lane = Lane(revision=0, version=0, role=LaneRole.primary, percent=100, endpoints=urls)
            plan = Plan(Route(deployment=name, model=name, lanes=[lane]))
            if old is not None and old.pools and plan.pools:
                plan.pools[0].keep_turn(old.pools[0])  # keep rotating where we were
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[name] = (plan, time.monotonic() + self._ttl)
        return plan
