"""Traffic in the control plane: fixed splits, shadows, and a canary's start, steps and end.

Each function acts on a deployment locked by the caller, in the caller's transaction, and
leaves ``DeploymentRow.lanes`` saying which revisions take calls (the route feed is built
from them). Side revisions (a split's, a shadow's, a canary's) are made with
``current=False``; their replicas run while a lane names them and stop (through the rollout
rule) once none does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contract.schemas import DeploymentSpec, RevisionReason
from contract.traffic import (
    CanaryOut,
    CanarySpec,
    CanaryState,
    Figures,
    LaneRole,
    ShadowSpec,
    TrafficEntry,
)
from registry.db import utcnow
from registry.errors import CanaryInProgress, TrafficRefused
from registry.repositories.deployments import DeploymentRepository, ReplicaRepository
from registry.repositories.events import EventRepository
from registry.services.context import Context
from registry.services.lanes import base_alone, compact, lane, of_role
from registry.services.revisions import resolve_body_versions, start_revision
from registry.services.rollout import reconcile
from registry.tables import DeploymentRow, RevisionRow, VersionRow

ACTIVE = (CanaryState.waiting, CanaryState.running)


def canary_of(deployment: DeploymentRow) -> CanaryOut | None:
    """The newest canary (kept after it ends)."""
    return None if deployment.canary is None else CanaryOut.model_validate(deployment.canary)


def active_canary(deployment: DeploymentRow) -> CanaryOut | None:
    """The canary waiting or running, if any."""
    canary = canary_of(deployment)
    return canary if canary is not None and canary.state in ACTIVE else None


def split_live(deployment: DeploymentRow) -> bool:
    return bool(of_role(deployment.lanes, LaneRole.split))


def _side_spec(spec: DeploymentSpec, replicas: int) -> DeploymentSpec:
    """A side revision's settings: the primary's, its own replicas, no alias or strategy."""
    return spec.model_copy(update={"replicas": replicas, "alias": None, "strategy": None})


async def _reusable(
    session: AsyncSession, deployment: DeploymentRow, version: int, replicas: int
) -> RevisionRow | None:
    """A revision a primary or split lane names now with this version and replica count
    (nothing restarts)."""
    repo = DeploymentRepository(session)
    named = deployment.lanes or [{"revision": deployment.revision, "role": LaneRole.primary}]
    for item in named:
        if item["role"] not in (LaneRole.primary, LaneRole.split):
            continue
        row = await repo.revision(deployment.id, int(item["revision"]))
        if row is not None and row.version == version and row.settings["replicas"] == replicas:
            return row
    return None


async def apply_split(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    spec: DeploymentSpec,
    entries: list[TrafficEntry],
) -> None:
    """A fixed split: the largest share (first on ties) is the primary (a rolling update
    when its version or settings change); each other version gets a side revision with its
    replicas, or keeps the live one it has. A shadow lane stays."""
    if (canary := active_canary(deployment)) is not None:
        raise CanaryInProgress(deployment.name, canary.revision, canary.state.value)
    versions = await resolve_body_versions(
        session, model, deployment.model_id, [e.version for e in entries], "traffic"
    )
    primary = max(entries, key=lambda e: e.percent)
    primary_spec = spec.model_copy(
        update={"alias": None, "replicas": primary.replicas or spec.replicas}
    )
    repo = DeploymentRepository(session)
    # side revisions to reuse are looked up before the primary moves (it may be one of them)
    sides: list[tuple[TrafficEntry, RevisionRow | None]] = [
        (e, await _reusable(session, deployment, e.version, e.replicas or spec.replicas))
        for e in entries
        if e is not primary
    ]
    current = await repo.revision(deployment.id, deployment.revision)
    settled = None if current is None else DeploymentSpec.model_validate(current.settings)
    if current is None or current.version != primary.version or settled != primary_spec:
        reason = RevisionReason.create if current is None else RevisionReason.update
        await start_revision(
            ctx, session, deployment, model, versions[primary.version], primary_spec, reason
        )
    # old primaries serve on (their share spread by ``lanes.settle``) until they stop
    olds = [] if current is None else [lane(current.revision, current.version, LaneRole.primary, 0)]
    olds += of_role(deployment.lanes, LaneRole.primary)
    reused = {row.revision for _, row in sides if row is not None} | {deployment.revision}
    items = [lane(deployment.revision, primary.version, LaneRole.primary, primary.percent)]
    items += list({o["revision"]: o for o in olds if o["revision"] not in reused}.values())
    for entry, row in sides:
        if row is None:
            side = _side_spec(spec, entry.replicas or spec.replicas)
            row = await start_revision(
                ctx,
                session,
                deployment,
                model,
                versions[entry.version],
                side,
                RevisionReason.split,
                current=False,
            )
        items.append(lane(row.revision, entry.version, LaneRole.split, entry.percent))
    deployment.lanes = compact([*items, *of_role(deployment.lanes, LaneRole.shadow)])
    await reconcile(ctx, session, deployment, model)


def clear_split(deployment: DeploymentRow) -> None:
    """A plain version change: the split ends (no more calls for its revisions, whose
    replicas stop one for one with the new primary's); a shadow stays."""
    if deployment.lanes:
        deployment.lanes = [
            *of_role(deployment.lanes, LaneRole.primary),
            *of_role(deployment.lanes, LaneRole.shadow),
        ]


async def apply_shadow(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    spec: DeploymentSpec,
    shadow: ShadowSpec | None,
) -> None:
    """Mirror a share of calls to a shadow revision (``None``: no shadow any more)."""
    others = [item for item in deployment.lanes or [] if item["role"] != LaneRole.shadow]
    if shadow is None:
        deployment.lanes = compact(others)
        await reconcile(ctx, session, deployment, model)
        return
    current = await DeploymentRepository(session).revision(deployment.id, deployment.revision)
    assert current is not None
    if shadow.version == current.version:
        raise TrafficRefused(
            f"a shadow of the version serving is no test: version {shadow.version} is "
            f"deployment {deployment.name!r}'s primary"
        )
    versions = await resolve_body_versions(
        session, model, deployment.model_id, [shadow.version], "shadow"
    )
    row = None
    for item in of_role(deployment.lanes, LaneRole.shadow):
        found = await DeploymentRepository(session).revision(deployment.id, item["revision"])
        if found and found.version == shadow.version:
            row = found if found.settings["replicas"] == shadow.replicas else None
    if row is None:
        row = await start_revision(
            ctx,
            session,
            deployment,
            model,
            versions[shadow.version],
            _side_spec(spec, shadow.replicas),
            RevisionReason.shadow,
            current=False,
        )
    if not others:
        others = [lane(deployment.revision, current.version, LaneRole.primary, 100)]
    deployment.lanes = [
        *others,
        lane(row.revision, shadow.version, LaneRole.shadow, shadow.percent),
    ]
    await reconcile(ctx, session, deployment, model)


async def start_canary(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    version: VersionRow,
    spec: DeploymentSpec,
    canary: CanarySpec,
) -> None:
    """A canary revision beside the current one, taking no calls until the controller
    (``registry/services/canary.py``) sees it ready. 422/409 when one cannot start."""
    repo = DeploymentRepository(session)
    base = await repo.revision(deployment.id, deployment.revision)
    assert base is not None
    if version.version == base.version:
        raise TrafficRefused(
            f"a canary needs a version other than the one serving (version {base.version})"
        )
    if (running := active_canary(deployment)) is not None:
        raise CanaryInProgress(deployment.name, running.revision, running.state.value)
    if split_live(deployment):
        raise TrafficRefused(
            f"deployment {deployment.name!r} serves a fixed split: a canary starts from one "
            "version (PATCH a single version first)"
        )
    if deployment.status != "available":
        raise TrafficRefused(
            f"a canary starts beside an available revision: deployment {deployment.name!r} "
            f"is {deployment.status}"
        )
    row = await start_revision(
        ctx, session, deployment, model, version, spec, RevisionReason.canary, current=False
    )
    now = utcnow()
    deployment.canary = CanaryOut(
        revision=row.revision,
        version=version.version,
        base_revision=base.revision,
        base_version=base.version,
        spec=canary,
        step=0,
        percent=0,
        state=CanaryState.waiting,
        started_at=now,
        step_started_at=None,
        reason=None,
        figures=None,
    ).model_dump(mode="json")
    deployment.lanes = [
        lane(base.revision, base.version, LaneRole.primary, 100),
        lane(row.revision, version.version, LaneRole.canary, 0),
        *of_role(deployment.lanes, LaneRole.shadow),
    ]
    await reconcile(ctx, session, deployment, model)


async def set_step(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    canary: CanaryOut,
    step: int,
    now: datetime,
    figures: Figures | None = None,
    base_figures: Figures | None = None,
) -> None:
    """The canary (running) takes ``spec.steps[step]`` percent of calls from now on."""
    percent = canary.spec.steps[step]
    first = canary.state is CanaryState.waiting
    canary = canary.model_copy(
        update={
            "state": CanaryState.running,
            "step": step,
            "percent": percent,
            "step_started_at": now,
            "reason": None,
            "figures": figures,
            "base_figures": base_figures,
        }
    )
    deployment.canary = canary.model_dump(mode="json")
    deployment.lanes = [
        lane(canary.base_revision, canary.base_version, LaneRole.primary, 100 - percent),
        lane(canary.revision, canary.version, LaneRole.canary, percent),
        *of_role(deployment.lanes, LaneRole.shadow),
    ]
    action = "deployment.canary_started" if first else "deployment.canary_step"
    await _event(ctx, session, deployment, model, action, canary)


async def promote(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    canary: CanaryOut,
    reason: str,
    figures: Figures | None = None,
    base_figures: Figures | None = None,
) -> None:
    """The canary revision becomes the current one; the base drains one for one."""
    row = await DeploymentRepository(session).revision(deployment.id, canary.revision)
    assert row is not None
    deployment.revision = canary.revision
    deployment.alias = row.settings.get("alias")
    deployment.status_reason = None
    deployment.lanes = [  # the base drains as a second primary lane (``lanes.settle``)
        lane(canary.revision, canary.version, LaneRole.primary, 100),
        lane(canary.base_revision, canary.base_version, LaneRole.primary, 0),
        *of_role(deployment.lanes, LaneRole.shadow),
    ]
    done = canary.model_copy(update={"percent": 100, "step": len(canary.spec.steps) - 1})
    await _finish(
        ctx, session, deployment, model, done, CanaryState.promoted, reason, figures, base_figures
    )
    await reconcile(ctx, session, deployment, model)


async def end_canary(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    canary: CanaryOut,
    state: CanaryState,
    reason: str,
    figures: Figures | None = None,
    base_figures: Figures | None = None,
) -> None:
    """Rolled back or aborted: every call back to the base at once, the canary's replicas
    asked to stop."""
    deployment.lanes = base_alone(deployment.lanes, canary.base_revision, canary.base_version)
    now = utcnow()
    events = EventRepository(session)
    for replica in await ReplicaRepository(session).of_deployments([deployment.id]):
        if replica.revision == canary.revision and replica.desired == "run":
            replica.desired, replica.updated_at = "stop", now
            await events.add(
                ctx.actor,
                "replica.stop_requested",
                model=model,
                target=f"deployment:{deployment.name}",
                after={"replica": replica.id, "revision": replica.revision, "index": replica.index},
            )
    done = canary.model_copy(update={"percent": 0})
    await _finish(ctx, session, deployment, model, done, state, reason, figures, base_figures)
    await reconcile(ctx, session, deployment, model)


async def _finish(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    canary: CanaryOut,
    state: CanaryState,
    reason: str,
    figures: Figures | None,
    base_figures: Figures | None,
) -> None:
    """The verdict: on the deployment's canary, on the canary revision, as an event."""
    canary = canary.model_copy(
        update={
            "state": state,
            "reason": reason,
            "figures": figures if figures is not None else canary.figures,
            "base_figures": base_figures if base_figures is not None else canary.base_figures,
        }
    )
    deployment.canary = canary.model_dump(mode="json")
    deployment.updated_at = utcnow()
    row = await DeploymentRepository(session).revision(deployment.id, canary.revision)
    assert row is not None
    row.verdict = {
        "state": state.value,
        "reason": reason,
        "figures": _dump(canary.figures),
        "base_figures": _dump(canary.base_figures),
        "at": utcnow().isoformat(),
    }
    await _event(ctx, session, deployment, model, f"deployment.canary_{state.value}", canary)


def _dump(figures: Figures | None) -> dict[str, Any] | None:
    return None if figures is None else figures.model_dump(mode="json")


async def _event(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    action: str,
    canary: CanaryOut,
) -> None:
    await EventRepository(session).add(
        ctx.actor,
        action,
        model=model,
        target=f"deployment:{deployment.name}",
        after={
            "deployment": deployment.name,
            "revision": canary.revision,
            "version": canary.version,
            "base_revision": canary.base_revision,
            "base_version": canary.base_version,
            "state": canary.state.value,
            "step": canary.step,
            "percent": canary.percent,
            "reason": canary.reason,
            "figures": _dump(canary.figures),
            "base_figures": _dump(canary.base_figures),
        },
    )
