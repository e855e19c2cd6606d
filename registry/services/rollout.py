"""The rollout rule, deterministic: from a deployment's replicas (and, when a new replica fits
nowhere, the room left on live workers), what to stop, what to forget, and the deployment's
status. ``reconcile`` applies it under the deployment's row lock; ``begin_revision`` starts a
new revision, and a failed one with ``auto_rollback`` set starts a rollback to the revision
before it by itself. Replicas of revisions named in the deployment's lanes (a split's, a
shadow's, a canary's) are live: the one-for-one rule neither stops nor counts them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contract.schemas import DeploymentSpec
from registry.db import utcnow
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository
from registry.repositories.events import Actor, EventRepository
from registry.repositories.versions import VersionRepository
from registry.services.context import Context
from registry.services.lanes import live_revisions, retarget, settle
from registry.services.placement import SERVING_DONE, Capacity, fleet_room
from registry.tables import DeploymentRow, ReplicaRow, RevisionRow


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
    budget: int = 0,
    fleet: list[Capacity] | None = None,
) -> Plan:
    """New replicas start beside the old; an old one stops only as a new one is ready (one
    for one); a failed new replica marks the deployment failed and stops nothing more.
    ``fresh``: the current revision was just made (it cannot be degraded yet).

    Stop-first, when a new replica fits on no live worker (``fleet``: the room each has
    left; ``None`` when nothing needs room): old replicas are stopped first to make room,
    never-ready ones before ready ones, and a ready one only while at least ``target -
    budget`` replicas stay ready (``budget``: the deployment's ``max_unavailable``)."""
    forget = [r.id for r in replicas if _forgettable(r, now)]
    if deployment.status == "deleting":
        stop = [r.id for r in replicas if r.desired == "run"]
        if all(not held(r, now) or r.state in SERVING_DONE for r in replicas):
            return Plan("deleting", deployment.status_reason, gone=True)
        return Plan("deleting", deployment.status_reason, stop, forget)
    new, old = _new_and_old(deployment, replicas)
    failed = [r for r in new if r.state == "failed"]
    if failed:
        first = failed[0]
        reason = f"revision {deployment.revision} replica {first.index} failed: {first.reason}"
        return Plan("failed", reason, forget=forget)
    ready = sum(r.state == "ready" for r in new)
    keep = max(0, target - ready)
    # never-ready old replicas go first: they serve nobody; so do, when lanes are listed,
    # those of revisions no lane names (an ended split's: no call reaches them)
    named = {int(item["revision"]) for item in deployment.lanes or []}
    by_value = sorted(old, key=lambda r: (r.revision in named, *_stop_order(r)))
    stop = [r.id for r in by_value[: max(0, len(old) - keep)]]
    room, waiting = _make_room(deployment, target, budget, replicas, new, old, stop, fleet, now)
    stop += room
    running_old = len(old) - len(stop)
    if ready >= target and running_old == 0:
        status = "available"
    elif not fresh and deployment.status in ("available", "degraded") and running_old == 0:
        status = "degraded"
    elif not any(held(r, now) for r in new):
        status = "pending"
    else:
        status = "rolling_out"
    return Plan(status, waiting, stop, forget)


def _new_and_old(
    deployment: DeploymentRow, replicas: list[ReplicaRow]
) -> tuple[list[ReplicaRow], list[ReplicaRow]]:
    """Running replicas of the current revision, and those of revisions no lane keeps."""
    current = deployment.revision
    live = live_revisions(deployment.lanes) - {current}
    running = [r for r in replicas if r.desired == "run" and r.revision not in live]
    return [r for r in running if r.revision == current], [
        r for r in running if r.revision != current
    ]


def _stop_order(replica: ReplicaRow) -> tuple[bool, int, int]:
    return (replica.state == "ready", replica.revision, -replica.index)


def needs_room(deployment: DeploymentRow, replicas: list[ReplicaRow], now: datetime) -> bool:
    """A replica of the current revision waits for a worker while old ones run somewhere:
    the case where ``plan`` wants the fleet's room."""
    if deployment.status == "deleting":
        return False
    new, old = _new_and_old(deployment, replicas)
    return any(not held(r, now) for r in new) and any(held(r, now) for r in old)


def _make_room(
    deployment: DeploymentRow,
    target: int,
    budget: int,
    replicas: list[ReplicaRow],
    new: list[ReplicaRow],
    old: list[ReplicaRow],
    stopping: list[str],
    fleet: list[Capacity] | None,
    now: datetime,
) -> tuple[list[str], str | None]:
    """Stop-first: the old replicas to stop so that new ones that fit nowhere get room, and
    why the rollout waits (``None`` when it does not)."""
    unplaced = [r for r in new if not held(r, now)]
    if not unplaced or not fleet or any(room.fits(r.gpus) for room in fleet for r in unplaced):
        return [], None  # nothing waits, nobody to place it, or a worker will claim it
    gpus = unplaced[0].gpus
    rooms = {room.worker_id: room for room in fleet}
    asked = set(stopping)
    candidates = sorted(
        (
            r
            for r in old
            if r.id not in asked
            and held(r, now)
            and r.worker_id in rooms
            and rooms[r.worker_id].fits_without(gpus, r)
        ),
        key=_stop_order,
    )
    # replicas already asked to stop (and still running) free their room soon
    freeing = sum(
        1
        for r in replicas
        if held(r, now)
        and r.state not in SERVING_DONE
        and (r.desired == "stop" or r.id in asked)
        and r.worker_id in rooms
        and rooms[r.worker_id].fits_without(gpus, r)
    )
    need = len(unplaced) - freeing
    why = f"no worker has room for revision {deployment.revision} beside the old replicas"
    serving = sum(r.desired == "run" and r.state == "ready" and r.id not in asked for r in replicas)
    floor = target - budget
    picked: list[str] = []
    for replica in candidates:
        if len(picked) >= need:
            break
        if replica.state == "ready":
            if serving - 1 < floor:
                break  # the rest are ready too (stop order)
            serving -= 1
        picked.append(replica.id)
    if picked:
        return picked, f"{why}: stopping old replicas first (max_unavailable {budget})"
    if freeing:
        return [], f"{why}: waiting for old replicas to stop first"
    if not candidates:
        return [], None  # stopping old replicas would not make room: placement says why
    if budget == 0:
        outage = " (calls fail until its replacement is ready)" if target == 1 else ""
        return [], f"{why}: set max_unavailable to 1 to stop one first{outage}"
    return [], f"{why}: waiting for new replicas to be ready (max_unavailable {budget})"


async def begin_revision(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    version: tuple[int, int],
    settings: dict[str, Any],
    reason: str,
    *,
    current: bool = True,
) -> RevisionRow:
    """A new revision of (version id, number) with ``settings`` and its replicas, beside
    the old ones; then the rollout rule. A ``current`` one becomes the primary (the
    primary lane moves to it); for another (a canary's, a split's, a shadow's) the caller
    names it in the lanes, then reconciles."""
    repo = DeploymentRepository(session)
    version_id, number = version
    revision = await repo.add_revision(
        deployment, version_id, number, settings, reason, ctx.actor.request_id, current=current
    )
    await ReplicaRepository(session).add(revision, int(settings["replicas"]), settings["gpus"])
    if current:
        deployment.alias = settings.get("alias")
        deployment.status_reason = None
        deployment.lanes = retarget(deployment.lanes, revision.revision, number)
    await EventRepository(session).add(
        ctx.actor,
        "deployment.revision_created",
        model=model,
        target=f"deployment:{deployment.name}",
        after={"revision": revision.revision, "version": number, "reason": reason},
    )
    if current:
        await reconcile(ctx, session, deployment, model, fresh=True)
    return revision


async def _roll_back_failed(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    failed: RevisionRow,
) -> None:
    """``auto_rollback``: a failed revision gives way to a copy of the one before it. Never
    for a rollback (no loop between two bad revisions), nor towards a version no longer
    ready."""
    repo = DeploymentRepository(session)
    if failed.reason == "rollback" or deployment.revision < 2:
        return
    earlier = await repo.previous_primary(deployment.id, deployment.revision)
    if earlier is None:
        return
    target = await VersionRepository(session).find_by_number(deployment.model_id, earlier.version)
    if target is None or target.status != "ready":
        return
    await EventRepository(session).add(
        ctx.actor,
        "deployment.auto_rolled_back",
        model=model,
        target=f"deployment:{deployment.name}",
        before={"revision": failed.revision, "version": failed.version},
        after={"to_revision": earlier.revision, "version": earlier.version},
    )
    await begin_revision(
        ctx,
        session,
        deployment,
        model,
        (target.id, target.version),
        earlier.settings,
        "rollback",
    )


async def reconcile(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    *,
    fresh: bool = False,
) -> bool:
    """Apply ``plan`` to a deployment locked by the caller; record each transition as an
    event. False when a deleting deployment is gone."""
    actor = ctx.actor
    now = utcnow()
    current = await DeploymentRepository(session).revision(deployment.id, deployment.revision)
    spec = None if current is None else DeploymentSpec.model_validate(current.settings)
    target = 0 if spec is None else spec.replicas
    budget = 0 if spec is None else spec.unavailable_budget()
    replicas = await ReplicaRepository(session).of_deployments([deployment.id])
    fleet = None
    if needs_room(deployment, replicas, now):
        fleet = await fleet_room(session, now, timedelta(seconds=ctx.settings.lease_ttl_s))
    decided = plan(deployment, target, replicas, now, fresh=fresh, budget=budget, fleet=fleet)
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
    if deployment.lanes and current is not None:
        _settle_lanes(deployment, current, replicas, set(decided.forget), now)
    if (decided.status, decided.reason) != (deployment.status, deployment.status_reason):
        failing = decided.status == "failed" and deployment.status != "failed"
        await _transition(events, actor, deployment, model, decided)
        if failing and current is not None and spec is not None and spec.auto_rollback:
            await _roll_back_failed(ctx, session, deployment, model, current)
    await session.flush()
    return True


def _settle_lanes(
    deployment: DeploymentRow,
    current: RevisionRow,
    replicas: list[ReplicaRow],
    forgotten: set[str],
    now: datetime,
) -> None:
    """Listed lanes after the rule ran: the primary's share spread by ready replicas, the
    lanes of revisions no longer serving dropped (``lanes.settle``)."""
    left = [r for r in replicas if r.id not in forgotten]
    serving = {
        r.revision
        for r in left
        if r.desired == "run" or (held(r, now) and r.state not in SERVING_DONE)
    }
    ready = Counter(r.revision for r in left if r.desired == "run" and r.state == "ready")
    settled = settle(deployment.lanes, current.revision, current.version, ready, serving)
    if settled != deployment.lanes:
        deployment.lanes = settled


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
