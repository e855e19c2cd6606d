"""Counts for ``/metrics`` gauges, read at scrape time (cheap GROUP BYs on indexed tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from registry.repositories.base import Repository
from registry.tables import (
    DeliveryRow,
    DeploymentRow,
    EndpointRow,
    OutboxRow,
    ReplicaRow,
    VersionRow,
    WorkerRow,
)


class StatsRepository(Repository):
    async def _grouped(self, column: Any) -> dict[str, int]:
        stmt = select(column, func.count()).group_by(column)
        return {str(k): int(n) for k, n in (await self._session.execute(stmt)).all()}

    async def replicas_by_state(self) -> dict[str, int]:
        return await self._grouped(ReplicaRow.state)

    async def endpoints_by_status(self) -> dict[str, int]:
        return await self._grouped(EndpointRow.status)

    async def deployments_by_status(self) -> dict[str, int]:
        return await self._grouped(DeploymentRow.status)

    async def versions_by_status(self) -> dict[str, int]:
        return await self._grouped(VersionRow.status)

    async def deliveries_by_status(self) -> dict[str, int]:
        return await self._grouped(DeliveryRow.status)

    async def live_workers(self, since: datetime) -> int:
        stmt = select(func.count()).where(WorkerRow.heartbeat_at >= since)
        return int(await self._session.scalar(stmt) or 0)

    async def outbox_depth(self) -> int:
        return int(await self._session.scalar(select(func.count()).select_from(OutboxRow)) or 0)
