"""The rollout rule, deterministic: from a deployment's replicas, what to stop, what to forget,
and the deployment's status. ``reconcile`` applies it under the deployment's row lock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from registry.db import utcnow
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository
from registry.repositories.events import Actor, EventRepository
from registry.tables import DeploymentRow, ReplicaRow

SERVING_DONE = ("stopped", "failed")


@dataclass
class Plan:
    status: str
    reason: str | None = None
    stop: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    gone: bool = False  # a deleting deployment with nothing left running


def held(replica: ReplicaRow, now: datetime) -> bool:
    """Some live worker holds the replica."""
    expires = replica.lease_expires_at
    return replica.worker_id is not None and expires is not None and expires > now


def _forgettable(replica: ReplicaRow, now: datetime) -> bool:
    """A replica asked to stop that no process serves any more."""
    return replica.desired == "stop" and (not held(replica, now) or replica.state in SERVING_DONE)


def plan(
    deployment: DeploymentRow,
    target: int,
    replicas: list[ReplicaRow],
    now: datetime,
    *,
    fresh: bool = False,
) -> Plan:
    """New replicas start beside the old; an old one stops only as a new one is ready (one
    for one); a failed new replica marks the deployment failed and stops nothing more.
    ``fresh``: the current revision was just made (it cannot be degraded yet)."""
    forget = [r.id for r in replicas if _forgettable(r, now)]
    if deployment.status == "deleting":
        stop = [r.id for r in replicas if r.desired == "run"]
        if all(not held(r, now) or r.state in SERVING_DONE for r in replicas):
            return Plan("deleting", deployment.status_reason, gone=True)
        return Plan("deleting", deployment.status_reason, stop, forget)
    new = [r for r in replicas if r.revision == deployment.revision and r.desired == "run"]
    old = [r for r in replicas if r.revision != deployment.revision and r.desired == "run"]
    failed = [r for r in new if r.state == "failed"]
    if failed:
        first = failed[0]
        reason = f"revision {deployment.revision} replica {first.index} failed: {first.reason}"
        return Plan("failed", reason, forget=forget)
    ready = sum(r.state == "ready" for r in new)
    keep = max(0, target - ready)
    # never-ready old replicas go first: they serve nobody
    by_value = sorted(old, key=lambda r: (r.state == "ready", r.revision, -r.index))
    stop = [r.id for r in by_value[: max(0, len(old) - keep)]]
    running_old = len(old) - len(stop)
    if ready >= target and running_old == 0:
        status = "available"
    elif not fresh and deployment.status in ("available", "degraded") and running_old == 0:
        status = "degraded"
    elif not any(held(r, now) for r in new):
        status = "pending"
    else:
        status = "rolling_out"
    return Plan(status, None, stop, forget)


async def reconcile(
    session: AsyncSession,
    actor: Actor,
    deployment: DeploymentRow,
    model: str,
    *,
    fresh: bool = False,
) -> bool:
    """Apply ``plan`` to a deployment locked by the caller; record each transition as an
    event. False when a deleting deployment is gone."""
    now = utcnow()
    current = await DeploymentRepository(session).revision(deployment.id, deployment.revision)
    target = int(current.settings["replicas"]) if current is not None else 0
    replicas = await ReplicaRepository(session).of_deployments([deployment.id])
    decided = plan(deployment, target, replicas, now, fresh=fresh)
    events = EventRepository(session)
    where = f"deployment:{deployment.name}"
    by_id = {r.id: r for r in replicas}
    for replica_id in decided.stop:
        replica = by_id[replica_id]
        replica.desired, replica.updated_at = "stop", now
        await events.add(
            actor,
            "replica.stop_requested",
            model=model,
            target=where,
            after={"replica": replica.id, "revision": replica.revision, "index": replica.index},
        )
    await ReplicaRepository(session).delete(decided.forget)
    if decided.gone:
        await DeploymentRepository(session).delete(deployment.id)
        await events.add(actor, "deployment.deleted", model=model, target=where)
        return False
    if (decided.status, decided.reason) != (deployment.status, deployment.status_reason):
        await _transition(events, actor, deployment, model, decided)
    await session.flush()
    return True


async def _transition(
    events: EventRepository, actor: Actor, deployment: DeploymentRow, model: str, decided: Plan
) -> None:
    before = deployment.status
    deployment.status, deployment.status_reason = decided.status, decided.reason
    deployment.updated_at = utcnow()
    where = f"deployment:{deployment.name}"
    if before != decided.status:
        await events.add(
            actor,
            "deployment.status_changed",
            model=model,
            target=where,
            before=before,
            after={"status": decided.status, "revision": deployment.revision},
        )
    if decided.status == "available" and before in ("pending", "rolling_out", "failed"):
        await events.add(
            actor,
            "deployment.rollout_finished",
            model=model,
            target=where,
            after={"revision": deployment.revision},
        )
    if decided.status == "failed":
        await events.add(
            actor,
            "deployment.failed",
            model=model,
            target=where,
            after={"revision": deployment.revision, "reason": decided.reason},
        )
