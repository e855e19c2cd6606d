"""SQL over the per-revision counts gateways report (``traffic_counts``): added per report,
summed over a window for a canary's verdict, bucketed for the dashboard's charts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select

from contract.traffic import BUCKETS, Figures, RevisionCounts, quantile
from registry.repositories.base import Repository
from registry.tables import TrafficCountRow


@dataclass
class Totals:
    """Counts summed over some rows."""

    calls: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    shadow_calls: int = 0
    shadow_errors: int = 0
    shadow_compared: int = 0
    shadow_disagreements: int = 0
    shadow_dropped: int = 0

    def add(self, row: TrafficCountRow) -> None:
        self.calls += row.calls
        self.errors += row.errors
        for i, n in enumerate(row.latency[:BUCKETS]):
            self.latency[i] += n
        self.shadow_calls += row.shadow_calls
        self.shadow_errors += row.shadow_errors
        self.shadow_compared += row.shadow_compared
        self.shadow_disagreements += row.shadow_disagreements
        self.shadow_dropped += row.shadow_dropped

    def figures(self) -> Figures:
        return Figures(
            calls=self.calls,
            errors=self.errors,
            error_rate=self.errors / self.calls if self.calls else 0.0,
            p50_ms=quantile(self.latency, 0.5),
            p99_ms=quantile(self.latency, 0.99),
        )


class TrafficRepository(Repository):
    async def add(
        self,
        deployment_id: int,
        gateway: str,
        started_at: datetime,
        ended_at: datetime,
        counts: RevisionCounts,
    ) -> None:
        self._session.add(
            TrafficCountRow(
                deployment_id=deployment_id,
                revision=counts.revision,
                gateway=gateway[:128],
                started_at=started_at,
                ended_at=ended_at,
                calls=counts.calls,
                errors=counts.errors,
                latency=list(counts.latency[:BUCKETS]),
                shadow_calls=counts.shadow_calls,
                shadow_errors=counts.shadow_errors,
                shadow_compared=counts.shadow_compared,
                shadow_disagreements=counts.shadow_disagreements,
                shadow_dropped=counts.shadow_dropped,
            )
        )

    async def rows(
        self, deployment_id: int, since: datetime, revision: int | None = None
    ) -> list[TrafficCountRow]:
        """Rows of reports that ended after ``since``, oldest first."""
        stmt = select(TrafficCountRow).where(
            TrafficCountRow.deployment_id == deployment_id, TrafficCountRow.ended_at > since
        )
        if revision is not None:
            stmt = stmt.where(TrafficCountRow.revision == revision)
        stmt = stmt.order_by(TrafficCountRow.ended_at)
        return list((await self._session.scalars(stmt)).all())

    async def totals(self, deployment_id: int, revision: int, since: datetime) -> Totals:
        """A revision's counts from reports that ended after ``since``."""
        totals = Totals()
        for row in await self.rows(deployment_id, since, revision):
            totals.add(row)
        return totals

    async def prune(self, before: datetime) -> None:
        await self._session.execute(
            delete(TrafficCountRow).where(TrafficCountRow.ended_at < before)
        )
