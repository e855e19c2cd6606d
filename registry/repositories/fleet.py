"""SQL over workers, endpoints, and what an assignment needs to know of a version."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.orm import aliased

from registry.repositories.base import Repository
from registry.tables import (
    DeploymentRow,
    EndpointRow,
    FileRow,
    ModelRow,
    ReplicaRow,
    RevisionRow,
    VersionRow,
    WorkerRow,
)

ENDPOINT_COLUMNS = (EndpointRow, DeploymentRow.name.label("deployment"))


class WorkerRepository(Repository):
    async def add(self, row: WorkerRow) -> WorkerRow:
        self._session.add(row)
        await self._session.flush()
        return row

    async def find(self, worker_id: str, *, lock: bool = False) -> WorkerRow | None:
        stmt = select(WorkerRow).where(WorkerRow.id == worker_id)
        if lock:
            # NO KEY UPDATE: rows that refer to the worker (endpoints, replicas) may still be
            # written by transactions holding deployment locks this one may wait for
            stmt = stmt.with_for_update(key_share=True)
        return (await self._session.scalars(stmt)).one_or_none()

    async def live(self, since: datetime) -> list[WorkerRow]:
        stmt = select(WorkerRow).where(WorkerRow.heartbeat_at >= since)
        return list(await self._session.scalars(stmt.order_by(WorkerRow.registered_at)))

    async def search(self, *, after: str | None, limit: int) -> list[WorkerRow]:
        stmt = select(WorkerRow).order_by(WorkerRow.id).limit(limit)
        if after is not None:
            stmt = stmt.where(WorkerRow.id > after)
        return list(await self._session.scalars(stmt))


class EndpointRepository(Repository):
    async def add(self, row: EndpointRow) -> EndpointRow:
        self._session.add(row)
        await self._session.flush()
        return row

    async def find(self, endpoint_id: str) -> EndpointRow | None:
        return await self._session.get(EndpointRow, endpoint_id)

    async def of_replica(self, replica_id: str) -> list[EndpointRow]:
        stmt = select(EndpointRow).where(EndpointRow.replica_id == replica_id)
        return list(await self._session.scalars(stmt))

    async def of_replicas(self, ids: Iterable[str]) -> dict[str, EndpointRow]:
        wanted = set(ids)
        if not wanted:
            return {}
        stmt = select(EndpointRow).where(EndpointRow.replica_id.in_(wanted))
        return {e.replica_id: e for e in await self._session.scalars(stmt) if e.replica_id}

    async def of_deployment(self, deployment_id: int) -> list[tuple[EndpointRow, str]]:
        stmt = (
            select(*ENDPOINT_COLUMNS)
            .join(DeploymentRow, DeploymentRow.id == EndpointRow.deployment_id)
            .where(EndpointRow.deployment_id == deployment_id)
            .order_by(EndpointRow.revision, EndpointRow.created_at)
        )
        return [(r[0], r[1]) for r in (await self._session.execute(stmt)).all()]

    async def delete(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        if wanted:
            await self._session.execute(
                delete(EndpointRow)
                .where(EndpointRow.id.in_(wanted))
                .execution_options(synchronize_session=False)
            )


async def route_rows(
    connection: Any, since: datetime, name: str | None = None
) -> tuple[list[Any], list[Any]]:
    """What the route feed is built from, in two round trips whatever the number of
    deployments (or of the one named): the deployments (``id``, ``name``, ``model``,
    ``revision``, its ``version``, ``lanes``) by name, and their ready endpoints whose
    heartbeat is not older than ``since`` (``deployment_id``, ``revision``, ``version``,
    ``url``, the replica's ``desired``), oldest first."""
    deployments = (
        select(
            DeploymentRow.id,
            DeploymentRow.name,
            ModelRow.name.label("model"),
            DeploymentRow.revision,
            RevisionRow.version,
            DeploymentRow.lanes,
        )
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .outerjoin(
            RevisionRow,
            and_(
                RevisionRow.deployment_id == DeploymentRow.id,
                RevisionRow.revision == DeploymentRow.revision,
            ),
        )
        .order_by(DeploymentRow.name)
    )
    endpoints = (
        select(
            EndpointRow.deployment_id,
            EndpointRow.revision,
            EndpointRow.version,
            EndpointRow.url,
            ReplicaRow.desired,
        )
        .outerjoin(ReplicaRow, ReplicaRow.id == EndpointRow.replica_id)
        .where(EndpointRow.status == "ready", EndpointRow.heartbeat_at >= since)
        .order_by(EndpointRow.created_at, EndpointRow.id)
    )
    if name is not None:
        deployments = deployments.where(DeploymentRow.name == name)
        endpoints = endpoints.join(
            DeploymentRow, DeploymentRow.id == EndpointRow.deployment_id
        ).where(DeploymentRow.name == name)
    found = list((await connection.execute(deployments)).all())
    if not found:
        return [], []
    return found, list((await connection.execute(endpoints)).all())


async def deployment_ids(session: Any, names: Iterable[str]) -> dict[str, int]:
    """Deployment id by name, for the names that exist."""
    wanted = set(names)
    if not wanted:
        return {}
    stmt = select(DeploymentRow.name, DeploymentRow.id).where(DeploymentRow.name.in_(wanted))
    return {r.name: r.id for r in (await session.execute(stmt)).all()}


async def revision_versions(
    session: Any, deployment_id: int, revisions: Iterable[int]
) -> dict[int, int]:
    """The version each of a deployment's ``revisions`` runs, for those that exist."""
    wanted = set(revisions)
    if not wanted:
        return {}
    stmt = select(RevisionRow.revision, RevisionRow.version).where(
        RevisionRow.deployment_id == deployment_id, RevisionRow.revision.in_(wanted)
    )
    return {r.revision: r.version for r in (await session.execute(stmt)).all()}


async def version_files(session: Any, version_ids: Iterable[int]) -> dict[int, list[Any]]:
    """Per version id: its manifest rows (path, size, sha256)."""
    wanted = set(version_ids)
    if not wanted:
        return {}
    stmt = (
        select(FileRow.version_id, FileRow.path, FileRow.size, FileRow.sha256)
        .where(FileRow.version_id.in_(wanted))
        .order_by(FileRow.version_id, FileRow.path)
    )
    out: dict[int, list[Any]] = {v: [] for v in wanted}
    for row in (await session.execute(stmt)).all():
        out[row.version_id].append(row)
    return out


async def revision_details(session: Any, revision_ids: Iterable[int]) -> dict[int, Any]:
    """Per revision id: deployment name, model name, version number, format, signature and
    settings, as an assignment needs them; and the request id of the deployment's newest
    revision (the rollout in progress, which old replicas' drains are part of too)."""
    current = aliased(RevisionRow)
    wanted = set(revision_ids)
    if not wanted:
        return {}
    stmt = (
        select(
            RevisionRow.id,
            RevisionRow.revision,
            RevisionRow.version_id,
            RevisionRow.version,
            RevisionRow.settings,
            current.request_id,
            DeploymentRow.name.label("deployment"),
            ModelRow.name.label("model"),
            VersionRow.format,
            VersionRow.signature,
            VersionRow.metadata_,
        )
        .join(DeploymentRow, DeploymentRow.id == RevisionRow.deployment_id)
        .join(VersionRow, VersionRow.id == RevisionRow.version_id)
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .outerjoin(
            current,
            and_(
                current.deployment_id == DeploymentRow.id,
                current.revision == DeploymentRow.revision,
            ),
        )
        .where(RevisionRow.id.in_(wanted))
    )
    return {r.id: r for r in (await session.execute(stmt)).all()}
