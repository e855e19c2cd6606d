"""``/deployments``: what runs where, as numbered revisions rolled out replica by replica."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from contract.schemas import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentUpdate,
    EndpointOut,
    Page,
    ReplicaOut,
    RevisionOut,
    RollbackRequest,
)
from registry.deps import Cursor, DeploymentDep, DeploymentNamePath, Limit
from registry.problems import problem_responses

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeploymentOut,
    summary="Create a deployment",
    responses=problem_responses(404, 409, 422),
)
async def create_deployment(body: DeploymentCreate, deployments: DeploymentDep) -> DeploymentOut:
    """Deploy a `ready` version (`version`) or follow an alias (`alias`) on `replicas`
    replicas, each with `gpus` GPUs (0: a CPU slot) on `device`. Revision 1 is created and
    deployer workers claim its replicas on their next heartbeat. Until one does, the
    deployment is `pending` and `status_reason` says why (e.g. no worker has enough GPUs).
    404 for an unknown model, version or alias; 409 for a version that is not ready or a
    name already taken."""
    return await deployments.create_deployment(body)


@router.get(
    "",
    response_model=Page[DeploymentOut],
    summary="List deployments",
    responses=problem_responses(400, 422),
)
async def list_deployments(
    deployments: DeploymentDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[DeploymentOut]:
    """Deployments by name, each with its desired and observed state."""
    return await deployments.list_deployments(cursor=cursor, limit=limit)


@router.get(
    "/{name}",
    response_model=DeploymentOut,
    summary="Get a deployment",
    responses=problem_responses(404, 422),
)
async def get_deployment(name: DeploymentNamePath, deployments: DeploymentDep) -> DeploymentOut:
    """Desired state (current revision, version, settings) and observed state: the newest
    version some ready replica serves, and every replica with its worker, state and reason."""
    return await deployments.get_deployment(name)


@router.patch(
    "/{name}",
    response_model=DeploymentOut,
    summary="Update a deployment",
    responses=problem_responses(404, 409, 422),
)
async def update_deployment(
    name: DeploymentNamePath, body: DeploymentUpdate, deployments: DeploymentDep
) -> DeploymentOut:
    """A new `version` (or `alias` to follow) or new settings make a new revision: its
    replicas start beside the old ones, and an old replica stops only once a new one is
    ready (a rolling update). With a canary `strategy`, a new version starts a canary
    instead (docs/traffic.md). `traffic` sets a fixed split between versions, `shadow`
    mirrors a share of calls to a version (`null` removes it); a new `version` alone ends a
    split. 422 for traffic, a shadow or a canary that cannot be (with the reason); 409 while
    a canary is in progress. A body that changes nothing changes nothing."""
    return await deployments.update_deployment(name, body)


@router.delete(
    "/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentOut,
    summary="Delete a deployment",
    responses={204: {"description": "Deleted: nothing was running"}, **problem_responses(404, 422)},
)
async def delete_deployment(name: DeploymentNamePath, deployments: DeploymentDep) -> Response:
    """Drain and stop: every replica is asked to stop and the deployment (status
    `deleting`) disappears once none runs. 202 with the deployment while it drains, 204 when
    it is gone at once."""
    out = await deployments.delete_deployment(name)
    if out is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JSONResponse(out.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.get(
    "/{name}/revisions",
    response_model=Page[RevisionOut],
    summary="List revisions",
    responses=problem_responses(400, 404, 422),
)
async def list_revisions(
    name: DeploymentNamePath, deployments: DeploymentDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[RevisionOut]:
    """The deployment's history, newest first: each revision's version, settings and why it
    was made (`create`, `update`, `rollback`, `alias-moved`, and beside the current one
    `canary`, `split`, `shadow`), with a canary's `verdict`."""
    return await deployments.list_revisions(name, cursor=cursor, limit=limit)


@router.post(
    "/{name}/rollback",
    response_model=DeploymentOut,
    summary="Roll a deployment back",
    responses=problem_responses(404, 409, 422),
)
async def rollback_deployment(
    name: DeploymentNamePath, deployments: DeploymentDep, body: RollbackRequest | None = None
) -> DeploymentOut:
    """Make a new revision equal to an earlier one: `to_revision`, or by default the one
    before the current. It rolls out like any update. 409 when there is no earlier
    revision or its version is no longer ready."""
    to_revision = body.to_revision if body is not None else None
    return await deployments.rollback_deployment(name, to_revision)


@router.get(
    "/{name}/endpoints",
    response_model=Page[EndpointOut],
    summary="Where a deployment is served",
    responses=problem_responses(404, 422),
)
async def list_deployment_endpoints(
    name: DeploymentNamePath, deployments: DeploymentDep
) -> Page[EndpointOut]:
    """The serving processes registered for the deployment: URL, status (`loading`,
    `ready`, `draining`, …), revision, version, worker and last heartbeat."""
    return await deployments.list_endpoints(name)


@router.get(
    "/{name}/replicas",
    response_model=Page[ReplicaOut],
    summary="List a deployment's replicas",
    responses=problem_responses(404, 422),
)
async def list_deployment_replicas(
    name: DeploymentNamePath, deployments: DeploymentDep
) -> Page[ReplicaOut]:
    """Every replica slot of every revision still present: desired (`run`/`stop`), state,
    reason, worker, GPU ids, lease and restarts."""
    return await deployments.list_replicas(name)


@router.post(
    "/{name}/canary/promote",
    response_model=DeploymentOut,
    summary="Promote a deployment's canary now",
    responses=problem_responses(404, 409, 422),
)
async def promote_canary(name: DeploymentNamePath, deployments: DeploymentDep) -> DeploymentOut:
    """The canary revision becomes the current one at once, whatever its step: it takes
    every call and the old revision's replicas stop one for one as the canary's are ready.
    409 when no canary is waiting or running."""
    return await deployments.promote_canary(name)


@router.post(
    "/{name}/canary/abort",
    response_model=DeploymentOut,
    summary="Abort a deployment's canary",
    responses=problem_responses(404, 409, 422),
)
async def abort_canary(name: DeploymentNamePath, deployments: DeploymentDep) -> DeploymentOut:
    """Every call goes back to the base revision at once, the canary's replicas are asked
    to stop, and the canary ends `aborted` (recorded on its revision). 409 when no canary
    is waiting or running."""
    return await deployments.abort_canary(name)
