"""The fleet: deployer workers (heartbeats, leases, claims, assignments) and the endpoints
their serving processes register. Every report ends in the rollout rule, under the
deployment's row lock."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from contract.optimize import OptimizationReport
from contract.schemas import (
    Assignments,
    EndpointHeartbeat,
    EndpointOut,
    EndpointRegister,
    Page,
    ReplicaReport,
    WorkerHeartbeat,
    WorkerOut,
    WorkerRegister,
)
from registry.db import reading, utcnow
from registry.errors import EndpointNotFound, ReplicaNotFound, WorkerNotFound
from registry.repositories.base import decode_cursor
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository, new_id
from registry.repositories.events import EventRepository
from registry.repositories.fleet import EndpointRepository, WorkerRepository
from registry.services.assignments import assignments_for
from registry.services.context import Context
from registry.services.deployment_views import endpoint_out
from registry.services.deployments import Changed, ignore
from registry.services.paging import to_page
from registry.services.placement import Capacity
from registry.services.rollout import held, reconcile
from registry.tables import DeploymentRow, EndpointRow, ReplicaRow, WorkerRow

# States only a running serving process knows; its endpoint's word beats the worker's.
PROCESS_STATES = frozenset({"loading", "warming", "ready", "unhealthy", "draining"})
LIVE = frozenset({"loading", "warming", "ready"})


class FleetService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._changed = changed  # told (after commit) which deployments' endpoints changed
        self._sessions = ctx.sessions
        self._ttl = timedelta(seconds=ctx.settings.lease_ttl_s)

    def _worker_out(self, row: WorkerRow, now: datetime) -> WorkerOut:
        return WorkerOut(
            id=row.id,
            name=row.name,
            host=row.host,
            address=row.address,
            gpus=row.gpus,
            cpu_slots=row.cpu_slots,
            registered_at=row.registered_at,
            heartbeat_at=row.heartbeat_at,
            live=row.heartbeat_at + self._ttl > now,
            lease_ttl_s=self._ctx.settings.lease_ttl_s,
            heartbeat_s=self._ctx.settings.heartbeat_s,
        )

    async def register_worker(self, body: WorkerRegister) -> WorkerOut:
        async with self._sessions.begin() as session:
            now = utcnow()
            row = await WorkerRepository(session).add(
                WorkerRow(id=new_id(), registered_at=now, heartbeat_at=now, **body.model_dump())
            )
            await EventRepository(session).add(
                self._ctx.actor,
                "worker.registered",
                model=None,
                target=f"worker:{row.id}",
                after=body.model_dump(mode="json"),
            )
            return self._worker_out(row, now)

    async def list_workers(self, *, cursor: str | None, limit: int) -> Page[WorkerOut]:
        after = decode_cursor(cursor, str)
        now = utcnow()
        async with reading(self._sessions) as session:
            rows = await WorkerRepository(session).search(after=after, limit=limit + 1)
            return to_page(rows, limit, lambda r: r.id, lambda r: self._worker_out(r, now))

    async def heartbeat(self, worker_id: str, body: WorkerHeartbeat, base_url: str) -> Assignments:
        """Renew the worker and its leases, take its reports, claim what fits, reconcile
        the deployments touched, and answer every replica leased to it."""
        async with self._sessions.begin() as session:
            now = utcnow()
            worker = await self._live_worker(session, worker_id, now, lock=True)
            worker.heartbeat_at = now
            locked = await self._lock_deployments(session, worker_id, now)
            replicas = await ReplicaRepository(session).of_deployments(locked)
            mine = [r for r in replicas if r.worker_id == worker_id]
            await self._take_reports(session, locked, mine, body.replicas, now)
            for replica in mine:
                replica.lease_expires_at = now + self._ttl
            await self._claim(session, locked, worker, replicas, mine, now)
            for deployment, model in locked.values():
                await reconcile(self._ctx, session, deployment, model)
            touched = [d.name for d, _ in locked.values()]
            answer = await assignments_for(session, worker_id, base_url)
        for name in touched:
            self._changed(name)
        return answer

    async def get_assignments(self, worker_id: str, base_url: str) -> Assignments:
        async with reading(self._sessions) as session:
            await self._live_worker(session, worker_id, utcnow())
            return await assignments_for(session, worker_id, base_url)

    async def _live_worker(
        self, session: AsyncSession, worker_id: str, now: datetime, *, lock: bool = False
    ) -> WorkerRow:
        worker = await WorkerRepository(session).find(worker_id, lock=lock)
        if worker is None or worker.heartbeat_at + self._ttl <= now:
            raise WorkerNotFound(worker_id)
        return worker

    async def _lock_deployments(
        self, session: AsyncSession, worker_id: str, now: datetime
    ) -> dict[int, tuple[DeploymentRow, str]]:
        """The worker's deployments (waiting for their locks, in id order), then those
        with free replicas that nobody else is locking (skipped, never waited for)."""
        deployments, replicas = DeploymentRepository(session), ReplicaRepository(session)
        ids = await replicas.deployments_of_worker(worker_id)
        locked = {d.id: (d, m) for d, m in await deployments.lock(ids)}
        free = set(await replicas.free_deployments(now)) - set(locked)
        locked.update({d.id: (d, m) for d, m in await deployments.lock(free)})
        return locked

    async def _take_reports(
        self,
        session: AsyncSession,
        locked: dict[int, tuple[DeploymentRow, str]],
        mine: list[ReplicaRow],
        reports: list[ReplicaReport],
        now: datetime,
    ) -> None:
        by_id = {r.id: r for r in mine}
        endpoints = await EndpointRepository(session).of_replicas(by_id)
        for report in reports:
            if (replica := by_id.get(report.replica_id)) is None:
                continue  # not (or no longer) this worker's: absent from its assignments
            state = report.state.value
            endpoint = endpoints.get(replica.id)
            deployment, model = locked[replica.deployment_id]
            if state == "unhealthy" and endpoint is not None and endpoint.status in LIVE:
                await self._process_exited(session, endpoint, deployment.name, model, report.reason)
            if state in PROCESS_STATES:
                state = _process_state(state, endpoint)
            replica.restarts = report.restarts
            await set_state(
                self._ctx, session, replica, (deployment.name, model), state, report.reason, now
            )

    async def _process_exited(
        self,
        session: AsyncSession,
        endpoint: EndpointRow,
        deployment: str,
        model: str,
        reason: str | None,
    ) -> None:
        """The worker saw the endpoint's process exit (it cannot say so itself): the
        endpoint is `unhealthy`, off the stable URL, until the restart registers anew."""
        before = endpoint.status
        endpoint.status, endpoint.reason = "unhealthy", reason
        await EventRepository(session).add(
            self._ctx.actor,
            "endpoint.status_changed",
            model=model,
            target=f"deployment:{deployment}",
            before=before,
            after={"endpoint": endpoint.id, "status": endpoint.status, "reason": reason},
        )

    async def _claim(
        self,
        session: AsyncSession,
        locked: dict[int, tuple[DeploymentRow, str]],
        worker: WorkerRow,
        replicas: list[ReplicaRow],
        mine: list[ReplicaRow],
        now: datetime,
    ) -> None:
        room = Capacity(worker, mine)
        free = [
            r
            for r in replicas
            if r.desired == "run"
            and not held(r, now)
            and locked[r.deployment_id][0].status != "deleting"
        ]
        events, endpoints = EventRepository(session), EndpointRepository(session)
        for replica in sorted(free, key=lambda r: (r.created_at, r.deployment_id, r.index)):
            if (gpu_ids := room.take(replica.gpus)) is None:
                continue
            before = replica.worker_id
            replica.worker_id, replica.gpu_ids = worker.id, gpu_ids
            replica.lease_expires_at, replica.updated_at = now + self._ttl, now
            replica.state, replica.reason, replica.restarts = "pending", None, 0
            # an earlier holder's process is presumed gone with its lease
            await endpoints.delete(e.id for e in await endpoints.of_replica(replica.id))
            deployment, model = locked[replica.deployment_id]
            await events.add(
                self._ctx.actor,
                "replica.claimed",
                model=model,
                target=f"deployment:{deployment.name}",
                before={"worker": before} if before else None,
                after={"replica": replica.id, "worker": worker.id, "gpu_ids": gpu_ids},
            )

    async def register_endpoint(self, body: EndpointRegister) -> EndpointOut:
        async with self._sessions.begin() as session:
            replicas = ReplicaRepository(session)
            if (found := await replicas.find(body.replica_id)) is None:
                raise ReplicaNotFound(body.replica_id)
            locked = await DeploymentRepository(session).lock([found.deployment_id])
            if not locked:  # the deployment went while we waited for its lock
                raise ReplicaNotFound(body.replica_id)
            [(deployment, model)] = locked
            now_there = [
                r for r in await replicas.of_deployments([deployment.id]) if r.id == found.id
            ]
            if not now_there:  # forgotten while we waited for the deployment's lock
                raise ReplicaNotFound(body.replica_id)
            [replica] = now_there
            endpoints = EndpointRepository(session)
            await endpoints.delete(e.id for e in await endpoints.of_replica(replica.id))
            revisions = await DeploymentRepository(session).revisions_by_id([replica.revision_id])
            now = utcnow()
            row = await endpoints.add(
                EndpointRow(
                    id=new_id(),
                    deployment_id=deployment.id,
                    replica_id=replica.id,
                    worker_id=replica.worker_id,
                    revision=replica.revision,
                    version=revisions[replica.revision_id].version,
                    url=body.url.rstrip("/"),
                    status=body.status.value,
                    reason=body.reason,
                    created_at=now,
                    heartbeat_at=now,
                )
            )
            await _record_optimization(session, row, deployment, body.optimization)
            await EventRepository(session).add(
                self._ctx.actor,
                "endpoint.registered",
                model=model,
                target=f"deployment:{deployment.name}",
                after={
                    "endpoint": row.id,
                    "url": row.url,
                    "replica": replica.id,
                    "status": row.status,
                },
            )
            where = (deployment.name, model)
            await set_state(self._ctx, session, replica, where, row.status, row.reason, now)
            await reconcile(self._ctx, session, deployment, model)
            out = endpoint_out(row, deployment.name)
        self._changed(out.deployment)
        return out

    async def endpoint_heartbeat(self, endpoint_id: str, body: EndpointHeartbeat) -> EndpointOut:
        async with self._sessions.begin() as session:
            row, deployment, model = await self._locked_endpoint(session, endpoint_id)
            now = utcnow()
            row.heartbeat_at = now
            await _record_optimization(session, row, deployment, body.optimization)
            if (body.status.value, body.reason) != (row.status, row.reason):
                before = row.status
                row.status, row.reason = body.status.value, body.reason
                await EventRepository(session).add(
                    self._ctx.actor,
                    "endpoint.status_changed",
                    model=model,
                    target=f"deployment:{deployment.name}",
                    before=before,
                    after={"endpoint": row.id, "status": row.status, "reason": row.reason},
                )
                await self._mirror(session, row, (deployment.name, model), row.status, now)
                await reconcile(self._ctx, session, deployment, model)
                changed = True
            else:
                changed = False
            out = endpoint_out(row, deployment.name)
        if changed:
            self._changed(out.deployment)
        return out

    async def delete_endpoint(self, endpoint_id: str) -> None:
        async with self._sessions.begin() as session:
            row, deployment, model = await self._locked_endpoint(session, endpoint_id)
            await EndpointRepository(session).delete([row.id])
            await EventRepository(session).add(
                self._ctx.actor,
                "endpoint.deregistered",
                model=model,
                target=f"deployment:{deployment.name}",
                before={"endpoint": row.id, "url": row.url, "status": row.status},
            )
            status = "failed" if row.status == "failed" else "stopped"
            await self._mirror(session, row, (deployment.name, model), status, utcnow())
            await reconcile(self._ctx, session, deployment, model)
            name = deployment.name
        self._changed(name)

    async def _locked_endpoint(
        self, session: AsyncSession, endpoint_id: str
    ) -> tuple[EndpointRow, DeploymentRow, str]:
        endpoints = EndpointRepository(session)
        if (found := await endpoints.find(endpoint_id)) is None:
            raise EndpointNotFound(endpoint_id)
        locked = await DeploymentRepository(session).lock([found.deployment_id])
        if not locked:  # the deployment went while we waited for its lock
            raise EndpointNotFound(endpoint_id)
        [(deployment, model)] = locked
        try:
            await session.refresh(found)
        except InvalidRequestError as exc:  # deleted while we waited for the lock
            raise EndpointNotFound(endpoint_id) from exc
        return found, deployment, model

    async def _mirror(
        self,
        session: AsyncSession,
        row: EndpointRow,
        where: tuple[str, str],
        status: str,
        now: datetime,
    ) -> None:
        """An endpoint's status is its replica's state, while that replica is still held
        by the endpoint's worker."""
        if row.replica_id is None:
            return
        replica = await ReplicaRepository(session).find(row.replica_id)
        if replica is not None and replica.worker_id == row.worker_id:
            await set_state(self._ctx, session, replica, where, status, row.reason, now)


async def _record_optimization(
    session: AsyncSession,
    row: EndpointRow,
    deployment: DeploymentRow,
    report: OptimizationReport | None,
) -> None:
    """An endpoint's optimisation report, kept on it and on its revision (the newest
    report wins: replicas of one revision make the same artifact)."""
    if report is None:
        return
    figures = report.model_dump(mode="json")
    if figures == row.optimization:
        return
    row.optimization = figures
    revision = await DeploymentRepository(session).revision(deployment.id, row.revision)
    if revision is not None:
        revision.optimization = figures


def _process_state(reported: str, endpoint: EndpointRow | None) -> str:
    """A worker's view of a running process yields to its endpoint's; and a replica is not
    `ready` before its endpoint says so (the stable URL would have nowhere to send calls
    while the old revision already drains)."""
    if endpoint is not None and endpoint.status in PROCESS_STATES:
        return endpoint.status
    return "warming" if reported == "ready" else reported


async def set_state(
    ctx: Context,
    session: AsyncSession,
    replica: ReplicaRow,
    where: tuple[str, str],
    state: str,
    reason: str | None,
    now: datetime,
) -> None:
    """Record a replica's state; a change is an event about its deployment (``where``:
    deployment and model names), so ``GET /events?deployment=`` shows it."""
    deployment, model = where
    if (state, reason) == (replica.state, replica.reason):
        return
    before = replica.state
    replica.state, replica.reason, replica.updated_at = state, reason, now
    if before != state:
        await EventRepository(session).add(
            ctx.actor,
            "replica.state_changed",
            model=model,
            target=f"deployment:{deployment}",
            before=before,
            after={
                "replica": replica.id,
                "state": state,
                "reason": reason,
                "revision": replica.revision,
            },
        )
