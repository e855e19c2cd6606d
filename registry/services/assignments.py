"""What a worker is told to run: per replica leased to it, the version, its files (with
absolute download URLs on this control plane), the device and batching settings."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from contract.examples import with_example
from contract.schemas import Assignment, AssignmentFile, Assignments, DeploymentSpec, Desired
from registry.repositories.deployments import ReplicaRepository
from registry.repositories.fleet import revision_details, version_files
from registry.services.version_views import file_url


async def assignments_for(session: AsyncSession, worker_id: str, base_url: str) -> Assignments:
    replicas = await ReplicaRepository(session).leased_to(worker_id)
    details = await revision_details(session, {r.revision_id for r in replicas})
    files = await version_files(session, {d.version_id for d in details.values()})
    base = base_url.rstrip("/")
    out: list[Assignment] = []
    for replica in replicas:
        detail = details[replica.revision_id]
        spec = DeploymentSpec.model_validate(detail.settings)
        out.append(
            Assignment(
                replica_id=replica.id,
                deployment=detail.deployment,
                revision=detail.revision,
                desired=Desired(replica.desired),
                model=detail.model,
                version=detail.version,
                format=detail.format,
                files=[
                    AssignmentFile(
                        path=f.path,
                        size=f.size,
                        sha256=f.sha256,
                        url=base + file_url(detail.model, detail.version, f.path),
                    )
                    for f in files[detail.version_id]
                ],
                signature=with_example(detail.signature, detail.metadata_),
                device=spec.device,
                gpu_ids=replica.gpu_ids,
                batching=spec.batching,
                allow_pickle=spec.allow_pickle,
                optimize=spec.optimize,
                request_id=detail.request_id,
            )
        )
    return Assignments(assignments=out)
