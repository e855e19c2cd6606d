"""Room on workers: what a worker has left, and what the live fleet has left (the stop-first
rule of rollouts asks whether a new replica fits anywhere)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from registry.repositories.deployments import ReplicaRepository
from registry.repositories.fleet import WorkerRepository
from registry.tables import ReplicaRow, WorkerRow

SERVING_DONE = ("stopped", "failed")


class Capacity:
    """What a worker has left: free GPU ids and CPU slots."""

    def __init__(self, worker: WorkerRow, mine: list[ReplicaRow]) -> None:
        self.worker_id = worker.id
        used = {g for r in mine for g in r.gpu_ids}
        self.gpus = [g for g in worker.gpus if g not in used]
        self.cpu = worker.cpu_slots - sum(1 for r in mine if r.gpus == 0)

    def fits(self, gpus: int) -> bool:
        return self.cpu > 0 if gpus == 0 else len(self.gpus) >= gpus

    def fits_without(self, gpus: int, replica: ReplicaRow) -> bool:
        """Would a replica needing ``gpus`` fit once ``replica`` (held here) stops?"""
        if gpus == 0:
            return replica.gpus == 0 or self.cpu > 0
        return len(self.gpus) + len(replica.gpu_ids) >= gpus

    def take(self, gpus: int) -> list[int] | None:
        """GPU ids for a replica (``[]`` for a CPU slot), or ``None`` if it does not fit."""
        if gpus == 0:
            if self.cpu <= 0:
                return None
            self.cpu -= 1
            return []
        if len(self.gpus) < gpus:
            return None
        taken, self.gpus = self.gpus[:gpus], self.gpus[gpus:]
        return taken


async def fleet_room(session: AsyncSession, now: datetime, ttl: timedelta) -> list[Capacity]:
    """What every live worker has left. A replica asked to stop whose process is done is
    about to be forgotten: its room counts as free."""
    workers = await WorkerRepository(session).live(now - ttl)
    if not workers:
        return []
    held = await ReplicaRepository(session).held(now)
    by_worker: dict[str, list[ReplicaRow]] = {w.id: [] for w in workers}
    for replica in held:
        if replica.desired == "stop" and replica.state in SERVING_DONE:
            continue
        if replica.worker_id in by_worker:
            by_worker[replica.worker_id].append(replica)
    return [Capacity(w, by_worker[w.id]) for w in workers]
