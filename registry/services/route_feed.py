"""The route feed: what every gateway routes by (``contract.traffic.RouteFeed``).

One snapshot per control-plane process of every deployment's `Route` (its lanes with each
lane's ready endpoint URLs), whether keys are checked, and the ids of the keys revoked or
expired within the last day. ONE background task per process recomputes it (two reads of
the endpoint table and one of the keys, however many deployments): when poked (``poke``:
this process changed a deployment's routes or revoked a key) and every
``route_feed_poll_s`` (changes made by other control-plane processes, heartbeats going
stale, keys expiring). Its cursor is a hash of its content. Long polls (``wait``) share the
snapshot: a gateway asking with the cursor it holds is answered when the content changes, or
after ``wait_s`` unchanged. A remote gateway's long poll (``long_poll``) also ends as soon as
its client disconnects or the process begins to shut down (``drain``): nothing waits on for
nobody, and the server's shutdown (which waits for every request) is not held up for
``wait_s``. The task starts with the first reader and stops once nobody has read for
``IDLE_S`` (so an app that is dropped leaves no task behind).

Lanes: a deployment's stored ``lanes`` (a split, a shadow, a canary), each with the ready
endpoints of its revision. A plain deployment (``lanes`` unset, also mid rolling update): one
``primary`` lane per revision that has ready endpoints, its share proportional to its ready
endpoints (calls spread evenly over every ready endpoint), the current revision's lane first
and always there. Endpoints count when ``ready`` with a heartbeat fresher than a lease;
those whose replica is asked to stop are left out while others are ready (they drain next).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import timedelta
from typing import Any

from contract.traffic import Lane, LaneRole, Route, RouteFeed
from registry.db import SessionFactory, reading_connection, utcnow
from registry.errors import DeploymentNotFound
from registry.repositories.fleet import route_rows
from registry.repositories.keys import ended_keys
from registry.settings import Settings

log = logging.getLogger("modelplane.registry")

REVOKED_WINDOW = timedelta(hours=24)  # a key revoked or expired longer ago is not listed
MAX_WAIT_S = 30.0  # the longest long poll
IDLE_S = 60.0  # the task stops after this long without a reader


def routes_of(deployments: Iterable[Any], endpoints: Iterable[Any]) -> list[Route]:
    """The routes of ``route_rows``' deployments and ready endpoints."""
    ready: dict[int, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for endpoint in endpoints:
        ready[endpoint.deployment_id][endpoint.revision].append(endpoint)
    routes = []
    for d in deployments:
        mine = ready.get(d.id, {})
        if d.lanes:
            lanes = [
                Lane(**lane, endpoints=_urls(mine.get(int(lane["revision"]), [])))
                for lane in d.lanes
            ]
        else:
            lanes = _plain(d.revision, d.version, mine)
        routes.append(Route(deployment=d.name, model=d.model, lanes=lanes))
    return routes


def _urls(rows: list[Any]) -> list[str]:
    """Ready URLs, those of replicas asked to stop only when no other is ready."""
    return [r.url for r in rows if r.desired != "stop"] or [r.url for r in rows]


def _plain(revision: int, version: int | None, ready: dict[int, list[Any]]) -> list[Lane]:
    """One primary lane per revision with ready endpoints, shared by endpoint count."""
    rows = [r for revision_rows in ready.values() for r in revision_rows]
    kept = [r for r in rows if r.desired != "stop"] or rows
    urls: dict[int, list[str]] = {}
    versions: dict[int, int] = {}
    if version is not None:
        urls[revision], versions[revision] = [], version
    for row in kept:
        urls.setdefault(row.revision, []).append(row.url)
        versions.setdefault(row.revision, row.version)
    total = len(kept)
    return [
        Lane(
            revision=rev,
            version=versions[rev],
            role=LaneRole.primary,
            percent=round(100 * len(found) / total, 6) if total else 100.0,
            endpoints=found,
        )
        for rev, found in urls.items()
    ]


async def load_routes(
    sessions: SessionFactory, lease_ttl_s: float, name: str | None = None
) -> list[Route]:
    """Every deployment's route (or the named one's: ``[]`` if there is no such)."""
    since = utcnow() - timedelta(seconds=lease_ttl_s)
    async with reading_connection(sessions) as connection:
        deployments, endpoints = await route_rows(connection, since, name)
    return routes_of(deployments, endpoints)


async def route_of(sessions: SessionFactory, lease_ttl_s: float, name: str) -> Route:
    """``GET /deployments/{name}/route``: read now, not from the snapshot."""
    found = await load_routes(sessions, lease_ttl_s, name)
    if not found:
        raise DeploymentNotFound(name)
    return found[0]


class RouteFeedService:
    """The process's route feed: ``poke`` it after a change, ``wait`` on it, ``close`` it."""

    def __init__(self, sessions: SessionFactory, settings: Settings) -> None:
        self._sessions = sessions
        self._auth = settings.auth_enabled
        self._ttl_s = settings.lease_ttl_s
        self._poll_s = settings.route_feed_poll_s
        self._feed: RouteFeed | None = None
        self._error: Exception | None = None  # the last computation's, until one succeeds
        self._asked = 0  # pokes so far
        self._done = -1  # pokes the snapshot covers
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()  # set (and replaced) after each computation
        self._task: asyncio.Task[None] | None = None
        self._readers = 0
        self._read_at = time.monotonic()
        self._draining = asyncio.Event()
        self._polls = 0

    @property
    def asked(self) -> int:
        """How many pokes so far (``fresh`` covers every one made before it was called)."""
        return self._asked

    @property
    def done(self) -> int:
        """How many pokes the snapshot covers."""
        return self._done

    @property
    def polls(self) -> int:
        """Remote long polls (``long_poll``) waiting now."""
        return self._polls

    def poke(self, deployment: str | None = None) -> None:
        """Recompute soon: this process changed ``deployment``'s routes, or revoked a key."""
        self._asked += 1
        self._wake.set()

    async def route(self, name: str) -> Route:
        """``GET /deployments/{name}/route``: read now (``route_of``), not the snapshot."""
        return await route_of(self._sessions, self._ttl_s, name)

    async def fresh(self) -> RouteFeed:
        """The snapshot, recomputed since every poke made before this call (and since this
        call, if the task had stopped: the snapshot may be old)."""
        if self._task is None or self._task.done():
            self._asked += 1
        target = self._asked
        self._readers += 1
        try:
            while self._feed is None or self._done < target:
                await self._next_tick(None)
            return self._feed
        finally:
            self._readers -= 1
            self._read_at = time.monotonic()

    async def wait(
        self, since: str | None, wait_s: float, stop: Collection[asyncio.Future[Any]] = ()
    ) -> RouteFeed:
        """At once if the snapshot's cursor is not ``since``; else when it changes, or after
        ``wait_s`` (at most ``MAX_WAIT_S``) unchanged, or once one of ``stop`` is done."""
        feed = await self.fresh()
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        self._readers += 1
        try:
            while feed.cursor == since and (left := deadline - time.monotonic()) > 0:
                if not await self._next_tick(left, stop):
                    break
                assert self._feed is not None
                feed = self._feed
        finally:
            self._readers -= 1
            self._read_at = time.monotonic()
        return feed

    async def long_poll(
        self, since: str | None, wait_s: float, disconnected: Callable[[], Awaitable[object]]
    ) -> RouteFeed:
        """``GET /gateway/routes``: ``wait``, ended early when ``disconnected()`` returns
        (the client went away) or the process drains (the gateway then asks another
        replica). The in-process gateway's ``wait`` is not ended by ``drain``: it would
        only ask again at once."""
        ended = [
            asyncio.ensure_future(disconnected()),
            asyncio.ensure_future(self._draining.wait()),
        ]
        self._polls += 1
        try:
            return await self.wait(since, wait_s, ended)
        finally:
            self._polls -= 1
            for future in ended:
                future.cancel()
            await asyncio.gather(*ended, return_exceptions=True)

    def drain(self) -> None:
        """The process begins to shut down: answer every waiting ``long_poll`` now, and
        later ones at once."""
        self._draining.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _next_tick(
        self, timeout_s: float | None, stop: Collection[asyncio.Future[Any]] = ()
    ) -> bool:
        """Until the next computation (``False`` after ``timeout_s``, or once one of
        ``stop`` is done); its error raised."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        tick: asyncio.Future[Any] = asyncio.ensure_future(self._tick.wait())
        try:
            done, _ = await asyncio.wait(
                [tick, *stop], timeout=timeout_s, return_when=FIRST_COMPLETED
            )
        finally:
            tick.cancel()
        if tick not in done:
            return False
        if self._error is not None:
            raise self._error
        return True

    async def _run(self) -> None:
        while True:
            asked = self._asked
            self._wake.clear()
            try:
                self._store(await self._compute())
                self._error = None
            except Exception as exc:  # the database is away: keep the last snapshot
                log.warning("route feed not recomputed: %r", exc)
                self._error = exc if self._feed is None else None
            self._done = asked
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()
            if not self._readers and time.monotonic() - self._read_at > IDLE_S:
                self._task = None
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    def _store(self, feed: RouteFeed) -> None:
        if self._feed is None or feed.cursor != self._feed.cursor:
            self._feed = feed

    async def _compute(self) -> RouteFeed:
        now = utcnow()
        since = now - timedelta(seconds=self._ttl_s)
        async with reading_connection(self._sessions) as connection:
            deployments, endpoints = await route_rows(connection, since)
            revoked = await ended_keys(connection, now - REVOKED_WINDOW, now)
        feed = RouteFeed(
            cursor="",
            auth=self._auth,
            routes=routes_of(deployments, endpoints),
            revoked_keys=revoked,
        )
        content = feed.model_dump_json(exclude={"cursor"}).encode()
        feed.cursor = hashlib.sha256(content).hexdigest()[:32]
        return feed
