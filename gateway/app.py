"""`Gateway`: the route table, key cache, counts, shadow and follower of one data plane,
built the same way by ``python -m gateway`` (HTTP callables, `gateway.remote`) and by the
embedded control plane (in-process callables). The API is in ``gateway/__init__.py``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from contract.traffic import RouteFeed
from gateway.counts import Counts, Reporter
from gateway.follow import Fetch, Follower
from gateway.keys import KeyCache, Verifier
from gateway.metrics import GatewayCollector, make_registry
from gateway.routes import RouteTable
from gateway.shadow import Shadow
from gateway.stable_url import StableUrl


class Gateway:
    """One data plane; `asgi` serves ``/{deployment}/...`` under root_path ``/serve``."""

    def __init__(
        self,
        *,
        fetch: Fetch,
        verifier: Verifier,
        reporter: Reporter,
        auth: bool = False,
        gateway_id: str = "gateway",
        report_s: float = 1.0,
        shadow_queue: int = 256,
        shadow_workers: int = 4,
    ) -> None:
        self.table = RouteTable()
        self.keys = KeyCache(verifier)
        self.counts = Counts(gateway_id, reporter, report_s=report_s)
        self.follower = Follower(fetch, self.table, self.keys)
        self.asgi = StableUrl(self.table, keys=self.keys, counts=self.counts, auth=auth)
        self.shadow = Shadow(
            self.counts, self.asgi.client, queue=shadow_queue, workers=shadow_workers
        )
        self.asgi.shadow = self.shadow
        collector = GatewayCollector(
            self.counts, self.follower, self.table, self.keys, lambda: self.shadow.dropped
        )
        self.metrics: CollectorRegistry = make_registry(collector)

    @property
    def ready(self) -> bool:
        """A first route feed was applied."""
        return self.follower.ready.is_set()

    async def wait_ready(self, timeout_s: float) -> None:
        """Until a first feed was applied; `TimeoutError` after ``timeout_s``."""
        await asyncio.wait_for(self.follower.ready.wait(), timeout_s)

    def apply(self, feed: RouteFeed) -> None:
        """Routes and revocations of ``feed``, now (the follower does this with each feed)."""
        self.follower.apply(feed)

    async def start(self) -> None:
        """Start following, reporting and mirroring (in the running event loop)."""
        self.follower.start()
        self.counts.start()
        self.shadow.start()

    async def close(self) -> None:
        """Stop the tasks, send a last report, close the HTTP pool."""
        await self.follower.close()
        await self.shadow.close()
        await self.counts.close()
        await self.asgi.close()
