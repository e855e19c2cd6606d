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
from registry.db import reading
from registry.errors import (
    AliasNotFound,
    DeploymentDeleting,
    Forbidden,
    NoPreviousRevision,
    RevisionNotFound,
    Unprocessable,
    VersionNotFound,
    VersionNotReady,
)
from registry.repositories.aliases import AliasRepository
from registry.repositories.base import decode_cursor
from registry.repositories.deployments import DeploymentRepository
from registry.repositories.events import EventRepository
from registry.repositories.fleet import EndpointRepository
from registry.repositories.models import ModelRepository
from registry.repositories.versions import VersionRepository
from registry.services.context import Context
from registry.services.deployment_views import (
    deployment_out,
    endpoint_out,
    replica_outs,
    revision_out,
)
from registry.services.optimize import check_optimize
from registry.services.paging import to_page
from registry.services.rollout import begin_revision, reconcile
from registry.tables import DeploymentRow, VersionRow

Changed: TypeAlias = Callable[[str], None]


def ignore(_: str) -> None:
    pass


async def resolve_version(
    session: AsyncSession, model: str, model_id: int, version: int | None, alias: str | None
) -> VersionRow:
    """The ready version a spec names (a number, or the alias's target)."""
    if alias is not None:
        if (found := await AliasRepository(session).find(model_id, alias)) is None:
            raise AliasNotFound(model, alias)
        version = int(found.version)
    assert version is not None
    row = await VersionRepository(session).find_by_number(model_id, version)
    if row is None:
        raise VersionNotFound(model, str(version))
    if row.status != "ready":
        raise VersionNotReady(model, version, row.status)
    return row


async def start_revision(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    version: VersionRow,
    spec: DeploymentSpec,
    reason: RevisionReason,
) -> None:
    """A new revision and its replicas, beside the old ones; then the rollout rule. A new
    setting is checked here (a rollback or an alias move keeps what was accepted before: a
    version the optimisation cannot check fails its replicas, with the reason)."""
    if reason in (RevisionReason.create, RevisionReason.update):
        await check_optimize(session, spec, version)
    settings = spec.model_dump(mode="json")
    target = (version.id, version.version)
    await begin_revision(ctx, session, deployment, model, target, settings, reason.value)


async def follow_alias(
    ctx: Context,
    session: AsyncSession,
    model: str,
    model_id: int,
    alias: str,
    version: int,
    *,
    rollback: bool = False,
) -> None:
    """Roll every deployment following ``alias`` to ``version``, in the caller's
    transaction (the alias move and the new revisions commit together)."""
    repo = DeploymentRepository(session)
    ids = await repo.following(model_id, alias)
    if not ids:
        return
    target = await resolve_version(session, model, model_id, version, None)
    reason = RevisionReason.rollback if rollback else RevisionReason.alias_moved
    for deployment, _ in await repo.lock(ids):
        current = await repo.revision(deployment.id, deployment.revision)
        if current is None or current.version == version or deployment.status == "deleting":
            continue
        spec = DeploymentSpec.model_validate(current.settings)
        await start_revision(ctx, session, deployment, model, target, spec, reason)


def _merged(current: DeploymentSpec, body: DeploymentUpdate) -> DeploymentSpec:
    values = current.model_dump()
    values.update(body.model_dump(exclude_none=True, exclude={"version", "alias"}))
    if body.alias is not None:
        values["alias"] = body.alias
    elif body.version is not None:
        values["alias"] = None
    spec = DeploymentSpec.model_validate(values)
    if spec.device is Device.cpu and spec.gpus > 0:
        raise Unprocessable("device 'cpu' takes no GPUs: set gpus to 0")
    if spec.device is Device.cuda and spec.gpus == 0:
        raise Unprocessable("device 'cuda' needs gpus >= 1")
    return spec


class DeploymentService:
    def __init__(self, ctx: Context, changed: Changed = ignore) -> None:
        self._ctx = ctx
        self._sessions = ctx.sessions
        self._changed = changed  # told (after commit) which deployment changed

    async def create_deployment(self, body: DeploymentCreate) -> DeploymentOut:
        """Deployment, revision 1 and its replicas; placement follows on worker heartbeats."""
        if not self._ctx.principal.reaches(body.model):
            raise Forbidden(
                f"the API key {self._ctx.principal.name!r} may not deploy model {body.model!r}"
            )
        async with self._sessions.begin() as session:
            # the model lock orders this against alias moves (follow_alias sees us)
            model_id = (await ModelRepository(session).get(body.model, lock=True)).id
            version = await resolve_version(session, body.model, model_id, body.version, body.alias)
            deployment = await DeploymentRepository(session).create(body.name, model_id, body.alias)
            spec = DeploymentSpec.model_validate(
                body.model_dump(exclude={"name", "model", "version"})
            )
            await EventRepository(session).add(
                self._ctx.actor,
                "deployment.created",
                model=body.model,
                target=f"deployment:{body.name}",
                after=body.model_dump(mode="json"),
            )
            await start_revision(
                self._ctx, session, deployment, body.model, version, spec, RevisionReason.create
            )
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
        """A new revision when the version or a setting changes; otherwise nothing."""
        async with self._sessions.begin() as session:
            repo = DeploymentRepository(session)
            deployment, model = await repo.get(name, lock=True)
            if deployment.status == "deleting":
                raise DeploymentDeleting(name)
            current = await repo.revision(deployment.id, deployment.revision)
            assert current is not None
            spec = _merged(DeploymentSpec.model_validate(current.settings), body)
            wanted = body.version if spec.alias is None else None
            if spec.alias is None and wanted is None:
                wanted = current.version
            version = await resolve_version(session, model, deployment.model_id, wanted, spec.alias)
            settled = DeploymentSpec.model_validate(current.settings)
            if version.id != current.version_id or spec != settled:
                await start_revision(
                    self._ctx, session, deployment, model, version, spec, RevisionReason.update
                )
            return await deployment_out(self._ctx, session, deployment, model)

    async def rollback_deployment(self, name: str, to_revision: int | None) -> DeploymentOut:
        """A new revision equal to an earlier one (default: the one before the current)."""
        async with self._sessions.begin() as session:
            repo = DeploymentRepository(session)
            deployment, model = await repo.get(name, lock=True)
            if deployment.status == "deleting":
                raise DeploymentDeleting(name)
            number = to_revision if to_revision is not None else deployment.revision - 1
            if number < 1:
                raise NoPreviousRevision(name)
            if (earlier := await repo.revision(deployment.id, number)) is None:
                raise RevisionNotFound(name, number)
            if number != deployment.revision:
                spec = DeploymentSpec.model_validate(earlier.settings)
                version = await resolve_version(
                    session, model, deployment.model_id, earlier.version, None
                )
                await start_revision(
                    self._ctx, session, deployment, model, version, spec, RevisionReason.rollback
                )
            return await deployment_out(self._ctx, session, deployment, model)

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
