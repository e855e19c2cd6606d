"""Deployments, replicas, revisions and endpoints as the API shows them (rows → schemas)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contract.enums import DeploymentStatus, EndpointStatus, ReplicaState
from contract.optimize import OptimizationReport
from contract.schemas import (
    DeploymentOut,
    DeploymentSpec,
    Desired,
    EndpointOut,
    Observed,
    ReplicaOut,
    RevisionOut,
    RevisionReason,
)
from contract.traffic import CanaryOut, CanaryState
from registry.db import utcnow
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository
from registry.repositories.fleet import WorkerRepository
from registry.services.context import Context
from registry.services.lanes import lanes_of
from registry.tables import DeploymentRow, EndpointRow, ReplicaRow, RevisionRow, WorkerRow


def revision_out(deployment: str, row: RevisionRow) -> RevisionOut:
    return RevisionOut(
        deployment=deployment,
        revision=row.revision,
        version=row.version,
        settings=row.settings,
        reason=RevisionReason(row.reason),
        created_at=row.created_at,
        request_id=row.request_id,
        optimization=_report(row.optimization),
        verdict=row.verdict,
    )


def endpoint_out(row: EndpointRow, deployment: str) -> EndpointOut:
    return EndpointOut(
        id=row.id,
        url=row.url,
        status=EndpointStatus(row.status),
        reason=row.reason,
        deployment=deployment,
        revision=row.revision,
        version=row.version,
        worker=row.worker_id,
        replica_id=row.replica_id,
        heartbeat_at=row.heartbeat_at,
        optimization=_report(row.optimization),
    )


def _report(stored: dict[str, Any] | None) -> OptimizationReport | None:
    return None if stored is None else OptimizationReport.model_validate(stored)


def replica_out(row: ReplicaRow, deployment: str, version: int) -> ReplicaOut:
    return ReplicaOut(
        id=row.id,
        deployment=deployment,
        revision=row.revision,
        version=version,
        index=row.index,
        desired=Desired(row.desired),
        state=ReplicaState(row.state),
        reason=row.reason,
        worker=row.worker_id,
        gpu_ids=row.gpu_ids,
        lease_expires_at=row.lease_expires_at,
        restarts=row.restarts,
    )


async def replica_outs(session: AsyncSession, deployment: DeploymentRow) -> list[ReplicaOut]:
    replicas = await ReplicaRepository(session).of_deployments([deployment.id])
    revisions = await DeploymentRepository(session).revisions_by_id(r.revision_id for r in replicas)
    return [replica_out(r, deployment.name, revisions[r.revision_id].version) for r in replicas]


def placement_reason(gpus: int, workers: list[WorkerRow]) -> str:
    """Why a replica needing ``gpus`` GPUs (0: a CPU slot) is not placed yet."""
    if not workers:
        return "no live worker"
    if gpus > 0:
        largest = max(len(w.gpus) for w in workers)
        if largest < gpus:
            return f"no worker has {gpus} GPUs (the largest has {largest})"
        return f"waiting for a worker with {gpus} free GPUs"
    if not any(w.cpu_slots for w in workers):
        return "no worker has a CPU slot"
    return "waiting for a worker with a free CPU slot"


async def deployment_out(
    ctx: Context, session: AsyncSession, row: DeploymentRow, model: str
) -> DeploymentOut:
    now = utcnow()
    current = await DeploymentRepository(session).revision(row.id, row.revision)
    assert current is not None
    spec = DeploymentSpec.model_validate(current.settings)
    replicas = await replica_outs(session, row)
    reason = row.status_reason
    unplaced = [
        r
        for r in replicas
        if r.revision == row.revision
        and r.desired == "run"
        and (r.worker is None or r.lease_expires_at is None or r.lease_expires_at <= now)
    ]
    if reason is None and unplaced:
        since = now - timedelta(seconds=ctx.settings.lease_ttl_s)
        reason = placement_reason(spec.gpus, await WorkerRepository(session).live(since))
    canary = None if row.canary is None else CanaryOut.model_validate(row.canary)
    if reason is None and canary is not None:
        reason = _canary_reason(canary)
    ready = [r for r in replicas if r.state == "ready"]
    newest = max(ready, key=lambda r: r.revision, default=None)
    return DeploymentOut(
        name=row.name,
        model=model,
        version=current.version,
        alias=row.alias,
        replicas=spec.replicas,
        gpus=spec.gpus,
        device=spec.device,
        batching=spec.batching,
        allow_pickle=spec.allow_pickle,
        max_unavailable=spec.unavailable_budget(),
        auto_rollback=spec.auto_rollback,
        optimize=spec.optimize,
        strategy=spec.strategy,
        revision=row.revision,
        status=DeploymentStatus(row.status),
        status_reason=reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        observed=Observed(
            version=newest.version if newest else None,
            ready_replicas=sum(r.revision == row.revision for r in ready),
            replicas=replicas,
        ),
        lanes=lanes_of(row.lanes, row.revision, current.version),
        canary=canary,
    )


def _canary_reason(canary: CanaryOut) -> str | None:
    """What a canary in progress adds to the primary's status."""
    if canary.state is CanaryState.waiting:
        return f"canary revision {canary.revision} waiting for a ready replica"
    if canary.state is CanaryState.running:
        return f"canary revision {canary.revision} at {canary.percent:g}%"
    return None
