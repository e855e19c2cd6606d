"""SQL over deployments, their revisions and their replicas."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from registry.db import utcnow
from registry.errors import DeploymentAlreadyExists, DeploymentNotFound
from registry.repositories.base import Repository, glob_clause
from registry.tables import DeploymentRow, ModelRow, ReplicaRow, RevisionRow

DEPLOYMENT_COLUMNS = (DeploymentRow, ModelRow.name.label("model"))


def new_id() -> str:
    return uuid.uuid4().hex


class DeploymentRepository(Repository):
    async def create(self, name: str, model_id: int, alias: str | None) -> DeploymentRow:
        row = DeploymentRow(name=name, model_id=model_id, alias=alias)
        self._session.add(row)
        try:
            await self._session.flush()
        except IntegrityError as exc:
            raise DeploymentAlreadyExists(name) from exc
        return row

    async def get(self, name: str, *, lock: bool = False) -> tuple[DeploymentRow, str]:
        """(row, model name); raises ``DeploymentNotFound``."""
        stmt = select(*DEPLOYMENT_COLUMNS).join(ModelRow).where(DeploymentRow.name == name)
        if lock:
            stmt = stmt.with_for_update(of=DeploymentRow)
        if (found := (await self._session.execute(stmt)).one_or_none()) is None:
            raise DeploymentNotFound(name)
        return found[0], found[1]

    async def lock(self, ids: Iterable[int]) -> list[tuple[DeploymentRow, str]]:
        """Lock deployments in id order (everyone locks in that order: no deadlocks)."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        stmt = (
            select(*DEPLOYMENT_COLUMNS)
            .join(ModelRow)
            .where(DeploymentRow.id.in_(wanted))
            .order_by(DeploymentRow.id)
            .with_for_update(of=DeploymentRow)
        )
        return [(r[0], r[1]) for r in (await self._session.execute(stmt)).all()]

    async def following(self, model_id: int, alias: str) -> list[int]:
        stmt = select(DeploymentRow.id).where(
            DeploymentRow.model_id == model_id,
            DeploymentRow.alias == alias,
            DeploymentRow.status != "deleting",
        )
        return list(await self._session.scalars(stmt))

    async def with_canary(self, states: Iterable[str]) -> list[int]:
        """Deployments whose canary is in one of ``states`` (the controller's one query)."""
        state = DeploymentRow.canary["state"].as_string()
        stmt = select(DeploymentRow.id).where(
            DeploymentRow.canary.is_not(None), state.in_(list(states))
        )
        return list(await self._session.scalars(stmt.order_by(DeploymentRow.id)))

    async def search(
        self, *, after: str | None, limit: int, globs: tuple[str, ...] = ()
    ) -> list[tuple[DeploymentRow, str]]:
        """``globs``: only deployments of models whose name matches one (none: all)."""
        stmt = select(*DEPLOYMENT_COLUMNS).join(ModelRow).order_by(DeploymentRow.name)
        if globs:
            stmt = stmt.where(glob_clause(ModelRow.name, globs))
        if after is not None:
            stmt = stmt.where(DeploymentRow.name > after)
        return [(r[0], r[1]) for r in (await self._session.execute(stmt.limit(limit))).all()]

    async def delete(self, deployment_id: int) -> None:
        await self._session.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment_id))

    async def add_revision(
        self,
        deployment: DeploymentRow,
        version_id: int,
        version: int,
        spec: dict[str, Any],
        reason: str,
        request_id: str | None = None,
        *,
        current: bool = True,
    ) -> RevisionRow:
        """Revision ``last_revision + 1``; only a ``current`` one becomes the deployment's
        ``revision`` (a canary's, a split's or a shadow's is made beside it)."""
        deployment.last_revision = max(deployment.last_revision, deployment.revision) + 1
        if current:
            deployment.revision = deployment.last_revision
        deployment.updated_at = utcnow()
        row = RevisionRow(
            deployment_id=deployment.id,
            revision=deployment.last_revision,
            version_id=version_id,
            version=version,
            settings=spec,
            reason=reason,
            request_id=request_id,
        )
        self._session.add(row)
        await self._session.flush()
        return row

    async def revision(self, deployment_id: int, number: int) -> RevisionRow | None:
        stmt = select(RevisionRow).where(
            RevisionRow.deployment_id == deployment_id, RevisionRow.revision == number
        )
        return (await self._session.scalars(stmt)).one_or_none()

    async def revisions(
        self, deployment_id: int, *, before: int | None, limit: int
    ) -> list[RevisionRow]:
        """Newest first."""
        stmt = (
            select(RevisionRow)
            .where(RevisionRow.deployment_id == deployment_id)
            .order_by(RevisionRow.revision.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(RevisionRow.revision < before)
        return list(await self._session.scalars(stmt))

    async def previous_primary(self, deployment_id: int, number: int) -> RevisionRow | None:
        """The newest revision older than ``number`` that was current once (not a split's
        or a shadow's, nor a canary that was never promoted)."""
        stmt = (
            select(RevisionRow)
            .where(RevisionRow.deployment_id == deployment_id, RevisionRow.revision < number)
            .where(RevisionRow.reason.not_in(("split", "shadow")))
            .order_by(RevisionRow.revision.desc())
        )
        for row in await self._session.scalars(stmt):
            if row.reason != "canary" or (row.verdict or {}).get("state") == "promoted":
                return row
        return None

    async def revisions_by_id(self, ids: Iterable[int]) -> dict[int, RevisionRow]:
        wanted = set(ids)
        if not wanted:
            return {}
        rows = await self._session.scalars(select(RevisionRow).where(RevisionRow.id.in_(wanted)))
        return {r.id: r for r in rows}


class ReplicaRepository(Repository):
    async def add(self, revision: RevisionRow, count: int, gpus: int) -> list[ReplicaRow]:
        rows = [
            ReplicaRow(
                id=new_id(),
                deployment_id=revision.deployment_id,
                revision_id=revision.id,
                revision=revision.revision,
                index=i,
                gpus=gpus,
                gpu_ids=[],
            )
            for i in range(count)
        ]
        self._session.add_all(rows)
        await self._session.flush()
        return rows

    async def of_deployments(self, ids: Iterable[int]) -> list[ReplicaRow]:
        wanted = set(ids)
        if not wanted:
            return []
        stmt = (
            select(ReplicaRow)
            .where(ReplicaRow.deployment_id.in_(wanted))
            .order_by(ReplicaRow.deployment_id, ReplicaRow.revision, ReplicaRow.index)
            .execution_options(populate_existing=True)
        )
        return list(await self._session.scalars(stmt))

    async def find(self, replica_id: str) -> ReplicaRow | None:
        return await self._session.get(ReplicaRow, replica_id)

    async def held(self, now: datetime) -> list[ReplicaRow]:
        """Every replica under a lease that has not lapsed."""
        stmt = select(ReplicaRow).where(
            ReplicaRow.worker_id.is_not(None), ReplicaRow.lease_expires_at > now
        )
        return list(await self._session.scalars(stmt))

    async def leased_to(self, worker_id: str) -> list[ReplicaRow]:
        stmt = select(ReplicaRow).where(ReplicaRow.worker_id == worker_id)
        return list(await self._session.scalars(stmt.order_by(ReplicaRow.created_at)))

    async def deployments_of_worker(self, worker_id: str) -> set[int]:
        stmt = select(ReplicaRow.deployment_id).where(ReplicaRow.worker_id == worker_id)
        return set(await self._session.scalars(stmt))

    async def free_deployments(self, now: datetime, *, limit: int = 256) -> list[int]:
        """Deployments with a replica to run that nobody holds (never claimed, or the lease
        lapsed), and those being deleted (to sweep up after workers that died). Locked rows
        are skipped: someone else is placing or reconciling them."""
        unheld = or_(ReplicaRow.worker_id.is_(None), ReplicaRow.lease_expires_at < now)
        stmt = (
            select(DeploymentRow.id)
            .join(ReplicaRow, ReplicaRow.deployment_id == DeploymentRow.id)
            .where(
                or_(
                    and_(ReplicaRow.desired == "run", DeploymentRow.status != "deleting", unheld),
                    and_(DeploymentRow.status == "deleting", unheld),
                )
            )
            .order_by(DeploymentRow.id)
            .limit(limit)
            .with_for_update(of=DeploymentRow, skip_locked=True)
        )
        return sorted(set(await self._session.scalars(stmt)))

    async def delete(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        if wanted:
            await self._session.execute(
                delete(ReplicaRow)
                .where(ReplicaRow.id.in_(wanted))
                .execution_options(synchronize_session=False)
            )


async def model_of_deployment(connection: AsyncConnection, name: str) -> str | None:
    """The name of the model a deployment serves (``None``: no such deployment)."""
    stmt = (
        select(ModelRow.name)
        .join(DeploymentRow, DeploymentRow.model_id == ModelRow.id)
        .where(DeploymentRow.name == name)
    )
    return (await connection.execute(stmt)).scalar_one_or_none()
