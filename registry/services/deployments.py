"""Deployments: desired state as numbered revisions, rolled out replica by replica."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from sqlalchemy.ext.asyncio import AsyncSession

from contract.enums import Device
from contract.schemas import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentSpec,
    DeploymentUpdate,
    EndpointOut,
    Page,
    ReplicaOut,
    RevisionOut,
    RevisionReason,
)
from contract.traffic import CanaryState
from registry.db import reading
from registry.errors import (
    CanaryInProgress,
    DeploymentDeleting,
    Forbidden,
    NoCanary,
    NoPreviousRevision,
    RevisionNotFound,
    TrafficRefused,
    Unprocessable,
)
from registry.repositories.base import decode_cursor
from registry.repositories.deployments import DeploymentRepository
from registry.repositories.events import EventRepository
from registry.repositories.fleet import EndpointRepository
from registry.repositories.models import ModelRepository
from registry.services.context import Context
from registry.services.deployment_views import (
    deployment_out,
    endpoint_out,
    replica_outs,
    revision_out,
)
from registry.services.optimize import check_optimize
from registry.services.paging import to_page
from registry.services.revisions import resolve_body_versions, resolve_version, start_revision
from registry.services.rollout import reconcile
from registry.services.traffic import (
    active_canary,
    apply_shadow,
    apply_split,
    clear_split,
    end_canary,
    promote,
    split_live,
    start_canary,
)
from registry.tables import DeploymentRow, RevisionRow

Changed: TypeAlias = Callable[[str], None]


def ignore(_: str) -> None:
    pass


async def follow_alias(
    ctx: Context,
    session: AsyncSession,
    model: str,
    model_id: int,
    alias: str,
    version: int,
    *,
    rollback: bool = False,
) -> list[str]:
    """Roll every deployment following ``alias`` to ``version``, in the caller's
    transaction (the alias move and the new revisions commit together). A deployment with
    a canary strategy starts a canary instead (when it can: an available deployment); a
    canary to another version ends (aborted) first; an alias rollback never canaries.
    Returns the names of the deployments changed: the caller tells the route feed after
    its commit."""
    repo = DeploymentRepository(session)
    ids = await repo.following(model_id, alias)
    if not ids:
        return []
    target = await resolve_version(session, model, model_id, version, None)
    reason = RevisionReason.rollback if rollback else RevisionReason.alias_moved
    changed: list[str] = []
    for deployment, _ in await repo.lock(ids):
        current = await repo.revision(deployment.id, deployment.revision)
        if current is None or deployment.status == "deleting":
            continue
        canary = active_canary(deployment)
        if canary is not None and canary.version != version:
            why = f"alias {alias!r} moved to version {version}"
            await end_canary(ctx, session, deployment, model, canary, CanaryState.aborted, why)
            changed.append(deployment.name)
            canary = None
        if current.version == version or canary is not None:
            continue
        spec = DeploymentSpec.model_validate(current.settings)
        wants = spec.strategy.canary if spec.strategy is not None else None
        if wants is not None and not rollback and _can_canary(deployment):
            await start_canary(ctx, session, deployment, model, target, spec, wants)
        else:
            clear_split(deployment)
            await start_revision(ctx, session, deployment, model, target, spec, reason)
        changed.append(deployment.name)
    return list(dict.fromkeys(changed))


def _can_canary(deployment: DeploymentRow) -> bool:
    return deployment.status == "available" and not split_live(deployment)


def _merged(current: DeploymentSpec, body: DeploymentUpdate) -> DeploymentSpec:
    values = current.model_dump()
    values.update(
        body.model_dump(
            exclude_none=True, exclude={"version", "alias", "traffic", "shadow", "strategy"}
        )
    )
    if body.alias is not None:
        values["alias"] = body.alias
    elif body.version is not None or body.traffic is not None:
        values["alias"] = None
    if "strategy" in body.model_fields_set:
        values["strategy"] = body.strategy
    spec = DeploymentSpec.model_validate(values)
    if spec.device is Device.cpu and spec.gpus > 0:
        raise Unprocessable("device 'cpu' takes no GPUs: set gpus to 0")
    if spec.device is Device.cuda and spec.gpus == 0:
        raise Unprocessable("device 'cuda' needs gpus >= 1")
    return spec


def _runs_alike(a: DeploymentSpec, b: DeploymentSpec) -> bool:
    """The same serving processes (the strategy only says how the next change rolls out)."""
    return a.model_copy(update={"strategy": None}) == b.model_copy(update={"strategy": None})


class DeploymentService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._changed = changed  # told (after commit) which deployment changed

    async def create_deployment(self, body: DeploymentCreate) -> DeploymentOut:
        """Deployment, revision 1 and its replicas (with ``traffic``: the primary's, then a
        side revision per other version; with ``shadow``: the shadow's); placement follows
        on worker heartbeats."""
        if not self._ctx.principal.reaches(body.model):
            raise Forbidden(
                f"the API key {self._ctx.principal.name!r} may not deploy model {body.model!r}"
            )
        async with self._sessions.begin() as session:
            # the model lock orders this against alias moves (follow_alias sees us)
            model_id = (await ModelRepository(session).get(body.model, lock=True)).id
            if body.traffic is not None:
                numbers = [e.version for e in body.traffic]
                await resolve_body_versions(session, body.model, model_id, numbers, "traffic")
            else:
                version = await resolve_version(
                    session, body.model, model_id, body.version, body.alias
                )
            deployment = await DeploymentRepository(session).create(body.name, model_id, body.alias)
            spec = DeploymentSpec.model_validate(
                body.model_dump(exclude={"name", "model", "version", "traffic", "shadow"})
            )
            await EventRepository(session).add(
                self._ctx.actor,
                "deployment.created",
                model=body.model,
                target=f"deployment:{body.name}",
                after=body.model_dump(mode="json"),
            )
            if body.traffic is not None:
                await apply_split(self._ctx, session, deployment, body.model, spec, body.traffic)
            else:
                await start_revision(
                    self._ctx, session, deployment, body.model, version, spec, RevisionReason.create
                )
            if body.shadow is not None:
                await apply_shadow(self._ctx, session, deployment, body.model, spec, body.shadow)
            out = await deployment_out(self._ctx, session, deployment, body.model)
        self._changed(body.name)  # the stable URL may remember it as unknown
        return out

    async def get_deployment(self, name: str) -> DeploymentOut:
        async with reading(self._sessions) as session:
            deployment, model = await DeploymentRepository(session).get(name)
            return await deployment_out(self._ctx, session, deployment, model)

    async def list_deployments(self, *, cursor: str | None, limit: int) -> Page[DeploymentOut]:
        after = decode_cursor(cursor, str)
        async with reading(self._sessions) as session:
            rows = await DeploymentRepository(session).search(
                after=after, limit=limit + 1, globs=self._ctx.principal.model_globs
            )
            items = [await deployment_out(self._ctx, session, d, m) for d, m in rows[:limit]]
            page = to_page(rows, limit, lambda r: r[0].name, lambda r: r)
            return Page[DeploymentOut](items=items, next_cursor=page.next_cursor)

    async def update_deployment(self, name: str, body: DeploymentUpdate) -> DeploymentOut:
        """A new revision when the version or a setting changes (a canary instead, when the
        version changes under a canary strategy); ``traffic`` sets a fixed split, ``shadow``
        a shadow (null: none); a change of ``strategy`` alone restarts nothing."""
        async with self._sessions.begin() as session:
            repo = DeploymentRepository(session)
            deployment, model = await repo.get(name, lock=True)
            if deployment.status == "deleting":
                raise DeploymentDeleting(name)
            current = await repo.revision(deployment.id, deployment.revision)
            assert current is not None
            settled = DeploymentSpec.model_validate(current.settings)
            spec = _merged(settled, body)
            if body.traffic is not None:
                await apply_split(self._ctx, session, deployment, model, spec, body.traffic)
            else:
                await self._change(session, deployment, model, current, settled, spec, body)
            if "shadow" in body.model_fields_set:
                await apply_shadow(self._ctx, session, deployment, model, spec, body.shadow)
            out = await deployment_out(self._ctx, session, deployment, model)
        self._changed(name)
        return out

    async def _change(
        self,
        session: AsyncSession,
        deployment: DeploymentRow,
        model: str,
        current: RevisionRow,
        settled: DeploymentSpec,
        spec: DeploymentSpec,
        body: DeploymentUpdate,
    ) -> None:
        """A version or settings change: a canary, a rolling update, or (the strategy
        alone) the current revision's strategy replaced in place."""
        wanted = body.version if spec.alias is None else None
        if spec.alias is None and wanted is None:
            wanted = current.version
        version = await resolve_version(session, model, deployment.model_id, wanted, spec.alias)
        canary = spec.strategy.canary if spec.strategy is not None else None
        named = body.version is not None or body.alias is not None
        if canary is not None and named and version.id == current.version_id:
            raise TrafficRefused(
                f"a canary needs a version other than the one serving (version {version.version})"
            )
        if canary is not None and version.id != current.version_id:
            await check_optimize(session, spec, version)
            await start_canary(self._ctx, session, deployment, model, version, spec, canary)
            if spec.strategy != settled.strategy:  # the deployment's, whatever the verdict
                strategy = None if spec.strategy is None else spec.strategy.model_dump(mode="json")
                current.settings = {**current.settings, "strategy": strategy}
        elif version.id != current.version_id or not _runs_alike(spec, settled):
            if (running := active_canary(deployment)) is not None:
                raise CanaryInProgress(deployment.name, running.revision, running.state.value)
            if version.id != current.version_id:
                clear_split(deployment)
            await start_revision(
                self._ctx, session, deployment, model, version, spec, RevisionReason.update
            )
        elif spec.strategy != settled.strategy:
            strategy = None if spec.strategy is None else spec.strategy.model_dump(mode="json")
            current.settings = {**current.settings, "strategy": strategy}
            await EventRepository(session).add(
                self._ctx.actor,
                "deployment.strategy_changed",
                model=model,
                target=f"deployment:{deployment.name}",
                before=settled.strategy and settled.strategy.model_dump(mode="json"),
                after=strategy,
            )

    async def rollback_deployment(self, name: str, to_revision: int | None) -> DeploymentOut:
        """A new revision equal to an earlier one (default: the primary before the
        current; during a canary, the current one: the canary is aborted and nothing else
        changes). A canary in progress is aborted; a split ends."""
        async with self._sessions.begin() as session:
            repo = DeploymentRepository(session)
            deployment, model = await repo.get(name, lock=True)
            if deployment.status == "deleting":
                raise DeploymentDeleting(name)
            canary = active_canary(deployment)
            if to_revision is not None:
                if to_revision < 1:
                    raise NoPreviousRevision(name)
                earlier = await repo.revision(deployment.id, to_revision)
                if earlier is None:
                    raise RevisionNotFound(name, to_revision)
            elif canary is not None:
                earlier = await repo.revision(deployment.id, deployment.revision)
            else:
                earlier = await repo.previous_primary(deployment.id, deployment.revision)
            if earlier is None:
                raise NoPreviousRevision(name)
            if canary is not None:
                why = f"rolled back to revision {earlier.revision} by request"
                await end_canary(
                    self._ctx, session, deployment, model, canary, CanaryState.aborted, why
                )
            if earlier.revision != deployment.revision:
                spec = DeploymentSpec.model_validate(earlier.settings)
                version = await resolve_version(
                    session, model, deployment.model_id, earlier.version, None
                )
                clear_split(deployment)
                await start_revision(
                    self._ctx, session, deployment, model, version, spec, RevisionReason.rollback
                )
            out = await deployment_out(self._ctx, session, deployment, model)
        self._changed(name)
        return out

    async def promote_canary(self, name: str) -> DeploymentOut:
        """The canary becomes the current revision now, whatever its step."""
        return await self._end_canary(name, CanaryState.promoted)

    async def abort_canary(self, name: str) -> DeploymentOut:
        """Every call back to the base at once; the canary's replicas stop."""
        return await self._end_canary(name, CanaryState.aborted)

    async def _end_canary(self, name: str, state: CanaryState) -> DeploymentOut:
        async with self._sessions.begin() as session:
            deployment, model = await DeploymentRepository(session).get(name, lock=True)
            if (canary := active_canary(deployment)) is None:
                raise NoCanary(name)
            who = self._ctx.actor.name
            if state is CanaryState.promoted:
                why = f"promoted by request ({who}) at {canary.percent:g}%"
                await promote(self._ctx, session, deployment, model, canary, why)
            else:
                why = f"aborted by request ({who}) at {canary.percent:g}%"
                await end_canary(self._ctx, session, deployment, model, canary, state, why)
            out = await deployment_out(self._ctx, session, deployment, model)
        self._changed(name)
        return out

    async def delete_deployment(self, name: str) -> DeploymentOut | None:
        """Drain: every replica is asked to stop; the deployment goes once none runs.
        ``None`` when it is gone already."""
        async with self._sessions.begin() as session:
            deployment, model = await DeploymentRepository(session).get(name, lock=True)
            if deployment.status != "deleting":
                await EventRepository(session).add(
                    self._ctx.actor,
                    "deployment.deleting",
                    model=model,
                    target=f"deployment:{name}",
                    before=deployment.status,
                )
                deployment.status, deployment.status_reason = "deleting", "deleted by request"
            gone = not await reconcile(self._ctx, session, deployment, model)
            out = None if gone else await deployment_out(self._ctx, session, deployment, model)
        self._changed(name)
        return out

    async def list_revisions(
        self, name: str, *, cursor: str | None, limit: int
    ) -> Page[RevisionOut]:
        """Newest first."""
        before = decode_cursor(cursor, int)
        async with reading(self._sessions) as session:
            repo = DeploymentRepository(session)
            deployment, _ = await repo.get(name)
            rows = await repo.revisions(deployment.id, before=before, limit=limit + 1)
            return to_page(rows, limit, lambda r: r.revision, lambda r: revision_out(name, r))

    async def list_endpoints(self, name: str) -> Page[EndpointOut]:
        async with reading(self._sessions) as session:
            deployment, _ = await DeploymentRepository(session).get(name)
            rows = await EndpointRepository(session).of_deployment(deployment.id)
            return Page[EndpointOut](items=[endpoint_out(e, d) for e, d in rows])

    async def list_replicas(self, name: str) -> Page[ReplicaOut]:
        async with reading(self._sessions) as session:
            deployment, _ = await DeploymentRepository(session).get(name)
            return Page[ReplicaOut](items=await replica_outs(session, deployment))
