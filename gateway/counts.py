"""What the gateway saw, per (deployment, revision), handed to a `Reporter` every ``report_s``.

On the hot path a call costs a dict lookup and a few integer increments (one event loop, so
no locks). Latency is the time from the call's start (its request read whole, or its
headers for a streamed body) to the answer's last byte handed to the server for answers held
whole, and to the answer's headers for streamed answers (large bodies, SSE): a stream's
length is the caller's business, not the endpoint's speed. A report that fails is merged
into the next one (its window then starts at the failed one's start); the keys are bounded
by the deployments and revisions live, so the backlog is too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeAlias

from contract.traffic import BUCKETS, RevisionCounts, TrafficReport, bucket

log = logging.getLogger("modelplane.gateway")

Reporter: TypeAlias = Callable[[TrafficReport], Awaitable[None]]
MAX_KEYS = 100_000  # (deployment, revision) pairs held between reports; more are dropped


class Tally:
    """One revision's counts in the current window."""

    __slots__ = ("calls", "errors", "latency", "shadow_calls", "shadow_errors",
                 "shadow_compared", "shadow_disagreements", "shadow_dropped")  # fmt: skip

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.latency = [0] * BUCKETS
        self.shadow_calls = 0
        self.shadow_errors = 0
        self.shadow_compared = 0
        self.shadow_disagreements = 0
        self.shadow_dropped = 0

    def call(self, status: int, seconds: float) -> None:
        self.calls += 1
        if status >= 500:
            self.errors += 1
        self.latency[bucket(seconds * 1000)] += 1

    def merge(self, other: Tally) -> None:
        for name in Tally.__slots__:
            if name == "latency":
                self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def out(self, deployment: str, revision: int) -> RevisionCounts:
        return RevisionCounts(
            deployment=deployment,
            revision=revision,
            calls=self.calls,
            errors=self.errors,
            latency=self.latency,
            shadow_calls=self.shadow_calls,
            shadow_errors=self.shadow_errors,
            shadow_compared=self.shadow_compared,
            shadow_disagreements=self.shadow_disagreements,
            shadow_dropped=self.shadow_dropped,
        )


Key: TypeAlias = tuple[str, int]


class Counts:
    """The current window's tallies, the running totals (for ``/metrics``), the reporting."""

    def __init__(self, gateway_id: str, reporter: Reporter | None, *, report_s: float = 1.0):
        self.gateway_id = gateway_id
        self._reporter = reporter
        self._report_s = report_s
        self._window: dict[Key, Tally] = {}
        self._started = datetime.now(UTC)
        self._pending: dict[Key, Tally] = {}  # a failed report's counts, for the next
        self._pending_since: datetime | None = None
        self.totals: dict[Key, Tally] = {}  # since start, updated at each report
        self._task: asyncio.Task[None] | None = None

    def tally(self, deployment: str, revision: int) -> Tally:
        key = (deployment, revision)
        tally = self._window.get(key)
        if tally is None:
            if len(self._window) >= MAX_KEYS:
                return Tally()  # counted nowhere: a bound, not a case that happens
            tally = self._window[key] = Tally()
        return tally

    def take(self) -> TrafficReport | None:
        """The window so far (merged with what failed to go), or ``None`` if empty; starts
        a new window."""
        window, self._window = self._window, {}
        started, self._started = self._started, datetime.now(UTC)
        for key, tally in window.items():
            _add(self.totals, key, tally)
        if self._pending:
            for key, tally in window.items():
                _add(self._pending, key, tally)
            window, self._pending = self._pending, {}
            started = self._pending_since or started
            self._pending_since = None
        if not window:
            return None
        return TrafficReport(
            gateway=self.gateway_id,
            started_at=started,
            ended_at=self._started,
            counts=[tally.out(d, r) for (d, r), tally in window.items()],
        )

    def keep(self, report: TrafficReport) -> None:
        """A report that could not go: merged into the next."""
        for c in report.counts:
            tally = Tally()
            for name in Tally.__slots__:
                setattr(tally, name, getattr(c, name))
            key = (c.deployment, c.revision)
            if key in self._pending or len(self._pending) < MAX_KEYS:
                _add(self._pending, key, tally)
        if self._pending_since is None or report.started_at < self._pending_since:
            self._pending_since = report.started_at

    def start(self) -> None:
        if self._reporter is not None and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="gateway-report")

    async def close(self) -> None:
        """Stop reporting, after one last report of what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self.flush()

    async def flush(self) -> None:
        report = self.take()
        if report is None or self._reporter is None:
            return
        try:
            await self._reporter(report)
        except Exception as exc:  # noqa: BLE001  kept for the next report
            log.warning("traffic report failed (%r); merged into the next", exc)
            self.keep(report)

    async def _loop(self) -> None:
        next_at = time.monotonic() + self._report_s
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self._report_s
            await self.flush()


def _add(into: dict[Key, Tally], key: Key, tally: Tally) -> None:
    have = into.get(key)
    if have is None:
        have = into[key] = Tally()
    have.merge(tally)
