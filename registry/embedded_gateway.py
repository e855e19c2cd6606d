"""The gateway mounted in the control plane's own process (the embedded ``modelplane up``):
``gateway/``'s `Gateway` at ``/serve/...``, connected by in-process callables instead of HTTP.

- fetch: the process's route feed (``RouteFeedService.wait``);
- verifier: the key check of ``POST /gateway/keys:verify`` (``services.keys.grant_for``);
- reporter: the ingestion of ``POST /gateway/reports`` (``TrafficReportService.ingest``).

Keys are checked from the gateway's cache (no database round trip per call); revocations
reach it through the feed. A change this process made (a poke of the feed) is applied before
the next call is routed, so a caller sees its own changes at once; other processes' changes
arrive with the feed, within ``route_feed_poll_s``. Started by the first call (the app's
lifespan may not run, as under ``httpx.ASGITransport``); after ``IDLE_S`` without calls it
stops following (no reads of the database for nobody), and the next call catches up first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from contract.paths import SERVE_PREFIX
from contract.traffic import KeyGrant, RouteFeed
from gateway.app import Gateway
from registry.db import SessionFactory
from registry.errors import Unauthenticated
from registry.services.keys import grant_for
from registry.services.route_feed import IDLE_S, RouteFeedService
from registry.services.traffic_reports import TrafficReportService
from registry.settings import Settings

FETCH_WAIT_S = 25.0
_ROOT = SERVE_PREFIX.rstrip("/")


class EmbeddedGateway:
    """The in-process gateway and what keeps it in step with this process's feed."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        feed: RouteFeedService,
        reports: TrafficReportService,
    ) -> None:
        self._sessions = sessions
        self._feed = feed
        self.gateway = Gateway(
            fetch=self._fetch,
            verifier=self._verify,
            reporter=reports.ingest,
            auth=settings.auth_enabled,
            gateway_id=f"{socket.gethostname()}:{settings.port}/{os.getpid()}",
        )
        self._started = False
        self._applied = -1  # the feed's pokes the gateway's table covers
        self._called_at = -IDLE_S - 1.0
        self._called = asyncio.Event()

    async def sync(self) -> None:
        """Before each call: start once; apply the feed if this process changed it (or the
        gateway was idle) since it was last applied."""
        if not self._started:
            self._started = True
            await self.gateway.start()
        now = time.monotonic()
        idle = now - self._called_at > IDLE_S
        self._called_at = now
        if idle:
            self._called.set()
        if idle or self._applied < self._feed.asked:
            self.gateway.apply(await self._feed.fresh())
            self._applied = self._feed.done

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.gateway.close()

    async def _fetch(self, since: str | None) -> RouteFeed:
        while time.monotonic() - self._called_at > IDLE_S:
            self._called.clear()
            await self._called.wait()
        return await self._feed.wait(since, FETCH_WAIT_S)

    async def _verify(self, token: str) -> KeyGrant | None:
        try:
            return await grant_for(self._sessions, token)
        except Unauthenticated:
            return None


class ServeEmbedded:
    """ASGI middleware: ``/serve/...`` goes to the embedded gateway, anything else on."""

    def __init__(self, app: ASGIApp, embedded: EmbeddedGateway) -> None:
        self.app = app
        self.embedded = embedded
        self._stable = embedded.gateway.asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(SERVE_PREFIX):
            await self.embedded.sync()
            await self._stable({**scope, "root_path": _ROOT}, receive, send)
            return
        await self.app(scope, receive, send)
