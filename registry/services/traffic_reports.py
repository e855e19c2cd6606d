"""What gateways count, in and out: their `TrafficReport`s stored per revision
(``traffic_counts``, read by the canary controller), and the per-revision series the
dashboard charts and the SDK reads (``GET /deployments/{name}/traffic``).

Rows older than ``KEEP`` (the longest window anyone reads) are pruned now and then, at most
once per ``PRUNE_EVERY_S`` per process.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from contract.traffic import (
    CanaryOut,
    LaneRole,
    RevisionSeries,
    SeriesPoint,
    TrafficReport,
    TrafficSeries,
)
from registry.db import SessionFactory, reading, utcnow
from registry.repositories.deployments import DeploymentRepository
from registry.repositories.fleet import deployment_ids, revision_versions
from registry.repositories.traffic import Totals, TrafficRepository
from registry.services.lanes import lanes_of
from registry.tables import TrafficCountRow

KEEP = timedelta(hours=1)
PRUNE_EVERY_S = 60.0
MAX_MINUTES = 60  # = KEEP


class TrafficReportService:
    """One per process (``app.state.traffic_reports``): it remembers when it last pruned."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions
        self._pruned_at = -math.inf

    async def ingest(self, report: TrafficReport) -> None:
        """Store a gateway's counts, per revision; counts of unknown deployments (deleted
        since the gateway counted them) are dropped."""
        prune = time.monotonic() - self._pruned_at >= PRUNE_EVERY_S
        if not report.counts and not prune:
            return
        async with self._sessions.begin() as session:
            ids = await deployment_ids(session, (c.deployment for c in report.counts))
            traffic = TrafficRepository(session)
            for counts in report.counts:
                if (deployment_id := ids.get(counts.deployment)) is not None:
                    await traffic.add(
                        deployment_id, report.gateway, report.started_at, report.ended_at, counts
                    )
            if prune:
                self._pruned_at = time.monotonic()
                await traffic.prune(utcnow() - KEEP)

    async def series(self, name: str, minutes: int, bucket_s: float) -> TrafficSeries:
        """Per revision with counts in the last ``minutes``: calls/s, error rate, p50 and
        p99 per ``bucket_s`` bucket (buckets aligned on multiples of ``bucket_s``), and its
        shadow totals; with the deployment's lanes and canary now."""
        now = utcnow()
        n = max(1, math.ceil(minutes * 60 / bucket_s))
        end = math.ceil(now.timestamp() / bucket_s) * bucket_s
        since = datetime.fromtimestamp(end - n * bucket_s, UTC)
        async with reading(self._sessions) as session:
            row, _ = await DeploymentRepository(session).get(name)
            rows = await TrafficRepository(session).rows(row.id, since)
            revisions = sorted({r.revision for r in rows})
            versions = await revision_versions(session, row.id, [row.revision, *revisions])
        lanes = lanes_of(row.lanes, row.revision, versions.get(row.revision, 0))
        roles = {lane.revision: lane.role for lane in lanes}
        return TrafficSeries(
            deployment=name,
            bucket_s=bucket_s,
            since=since,
            lanes=lanes,
            canary=CanaryOut.model_validate(row.canary) if row.canary else None,
            revisions=[
                _revision_series(
                    [r for r in rows if r.revision == revision],
                    (revision, versions.get(revision, 0), roles.get(revision)),
                    since,
                    now,
                    (n, bucket_s),
                )
                for revision in revisions
            ],
        )


def _revision_series(
    rows: list[TrafficCountRow],
    which: tuple[int, int, LaneRole | None],
    since: datetime,
    now: datetime,
    buckets: tuple[int, float],
) -> RevisionSeries:
    n, bucket_s = buckets
    sums: dict[int, Totals] = defaultdict(Totals)
    total = Totals()
    for row in rows:
        i = int((row.ended_at - since).total_seconds() // bucket_s)
        sums[min(max(i, 0), n - 1)].add(row)
        total.add(row)
    points = []
    for i in range(n):
        t = since + timedelta(seconds=i * bucket_s)
        # the last bucket is still filling: its rate over the time it has run
        span = min(bucket_s, max((now - t).total_seconds(), 1e-3))
        figures = sums[i].figures() if i in sums else None
        points.append(
            SeriesPoint(
                t=t,
                calls_per_s=figures.calls / span if figures else 0.0,
                error_rate=figures.error_rate if figures and figures.calls else None,
                p50_ms=figures.p50_ms if figures else None,
                p99_ms=figures.p99_ms if figures else None,
            )
        )
    revision, version, role = which
    return RevisionSeries(
        revision=revision,
        version=version,
        role=role,
        points=points,
        shadow_calls=total.shadow_calls,
        shadow_disagreements=total.shadow_disagreements,
        shadow_dropped=total.shadow_dropped,
        shadow_errors=total.shadow_errors,
        shadow_compared=total.shadow_compared,
    )
