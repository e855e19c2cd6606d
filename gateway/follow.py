"""Following the control plane's route table: a long poll that never stops.

``fetch(since)`` answers a `RouteFeed` when the table differs from the cursor ``since``
(``None``: at once) or after ~25 s unchanged. Each feed replaces the route table whole and
drops the grants of the keys it names as revoked. When fetching fails the last table keeps
serving and the fetch is retried after a capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from contract.traffic import RouteFeed
from gateway.keys import KeyCache
from gateway.routes import RouteTable

log = logging.getLogger("modelplane.gateway")

Fetch: TypeAlias = Callable[[str | None], Awaitable[RouteFeed]]
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0


class Follower:
    """Applies each feed ``fetch`` returns to ``table`` (and its revocations to ``keys``)."""

    def __init__(self, fetch: Fetch, table: RouteTable, keys: KeyCache | None = None) -> None:
        self._fetch = fetch
        self._table = table
        self._keys = keys
        self.cursor: str | None = None
        self.fed_at: float | None = None  # monotonic time of the last feed
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def apply(self, feed: RouteFeed) -> None:
        if self._keys is not None and feed.revoked_keys:
            self._keys.forget(feed.revoked_keys)
        self._table.apply(feed)
        self.cursor = feed.cursor
        self.fed_at = time.monotonic()
        self.ready.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="gateway-follow")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                feed = await self._fetch(self.cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  keep serving the last table
                failures += 1
                wait = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** min(failures, 10))
                wait *= 0.5 + random.random() / 2
                log.warning("route feed failed (%r); retrying in %.1f s", exc, wait)
                await asyncio.sleep(wait)
                continue
            if failures:
                log.info("route feed back after %d failures", failures)
            failures = 0
            self.apply(feed)
