"""Periodic work in every control-plane process: webhook delivery, garbage collection and
the canary controller.

All are safe with many processes and replicas: deliveries are claimed with ``SKIP
LOCKED``, garbage collection takes a Postgres advisory lock (one sweep at a time), and the
canary controller locks each deployment's row before it moves its canary on.
A failed pass is logged and the next one runs on schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from registry.db import SessionFactory
from registry.metrics import ControlPlaneMetrics
from registry.repositories.events import Actor
from registry.services.canary import CanaryController
from registry.services.context import Context
from registry.services.gc import GcService
from registry.services.webhooks import WebhookDispatcher
from registry.settings import Settings
from storage.base import ArtifactStore

log = logging.getLogger("modelplane.jobs")


class Jobs:
    def __init__(
        self,
        sessions: SessionFactory,
        store: ArtifactStore,
        settings: Settings,
        metrics: ControlPlaneMetrics | None = None,
        *,
        changed: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self.dispatcher = WebhookDispatcher(sessions, settings, metrics)
        self._gc_context = Context(sessions, store, settings, Actor(name="gc"), metrics=metrics)
        canary_context = Context(sessions, store, settings, Actor(name="canary"), metrics=metrics)
        # told (after commit) the deployments whose routes a canary step changed
        self.canaries = CanaryController(canary_context, changed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        settings = self._settings
        if settings.webhook_poll_s > 0:
            self._spawn("webhooks", self.dispatcher.run_once, settings.webhook_poll_s, 0.0)
        if settings.gc_interval_s > 0:
            # Replicas started together should not all try at once (they would skip anyway).
            first = settings.gc_interval_s * (0.5 + random.random() / 2)
            self._spawn("gc", self.collect_garbage, settings.gc_interval_s, first)
        if settings.canary_tick_s > 0:
            self._spawn("canary", self.canaries.tick, settings.canary_tick_s, 0.0)

    async def collect_garbage(self) -> None:
        """One GC round: unreferenced blobs, abandoned uploads, old webhook deliveries."""
        await GcService(self._gc_context).collect(dry_run=False)
        if pruned := await self.dispatcher.prune():
            log.info("pruned %d finished webhook deliveries", pruned)

    def _spawn(
        self, name: str, step: Callable[[], Awaitable[object]], every: float, first: float
    ) -> None:
        self._tasks.append(asyncio.create_task(_every(name, step, every, first), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.dispatcher.close()


async def _every(
    name: str, step: Callable[[], Awaitable[object]], every: float, first: float
) -> None:
    await asyncio.sleep(first)
    while True:
        try:
            await step()
        except Exception:
            log.exception("background job %s failed; next pass in %.0fs", name, every)
        await asyncio.sleep(every)
