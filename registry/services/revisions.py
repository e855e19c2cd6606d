"""Starting a deployment's revisions: the version a spec names, checked, and the revision
with its replicas (the rollout rule follows)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from contract.schemas import DeploymentSpec, RevisionReason
from registry.errors import AliasNotFound, UnusableVersions, VersionNotFound, VersionNotReady
from registry.repositories.aliases import AliasRepository
from registry.repositories.versions import VersionRepository
from registry.services.context import Context
from registry.services.optimize import check_optimize
from registry.services.rollout import begin_revision
from registry.tables import DeploymentRow, RevisionRow, VersionRow

# Reasons whose settings are new (a canary checks its own: an alias move may start one)
CHECKED = (RevisionReason.create, RevisionReason.update, RevisionReason.split,
           RevisionReason.shadow)  # fmt: skip


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


async def resolve_body_versions(
    session: AsyncSession, model: str, model_id: int, numbers: list[int], what: str
) -> dict[int, VersionRow]:
    """The ready versions a body's ``traffic`` or ``shadow`` names; 422 naming every one
    that is unknown or not ready (they are in the body, not the path)."""
    repo = VersionRepository(session)
    found: dict[int, VersionRow] = {}
    bad: list[str] = []
    for number in numbers:
        row = await repo.find_by_number(model_id, number)
        if row is None:
            bad.append(f"{number} (no such version)")
        elif row.status != "ready":
            bad.append(f"{number} ({row.status})")
        else:
            found[number] = row
    if bad:
        raise UnusableVersions(model, what, bad)
    return found


async def start_revision(
    ctx: Context,
    session: AsyncSession,
    deployment: DeploymentRow,
    model: str,
    version: VersionRow,
    spec: DeploymentSpec,
    reason: RevisionReason,
    *,
    current: bool = True,
) -> RevisionRow:
    """A new revision and its replicas, beside the old ones; then (for a ``current`` one)
    the rollout rule. A new setting is checked here (a rollback or an alias move keeps what
    was accepted before: a version the optimisation cannot check fails its replicas, with
    the reason)."""
    if reason in CHECKED:
        await check_optimize(session, spec, version)
    settings = spec.model_dump(mode="json")
    target = (version.id, version.version)
    return await begin_revision(
        ctx, session, deployment, model, target, settings, reason.value, current=current
    )
