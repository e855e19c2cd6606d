"""``/workers``: deployer workers register, heartbeat, and learn what to run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from contract.schemas import Assignments, Page, WorkerHeartbeat, WorkerOut, WorkerRegister
from registry.deps import Cursor, FleetDep, Limit
from registry.problems import problem_responses

router = APIRouter(prefix="/workers", tags=["workers"])
WorkerId = Annotated[str, Path(max_length=64, description="the worker's id")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WorkerOut,
    summary="Register a worker",
    responses=problem_responses(422),
)
async def register_worker(body: WorkerRegister, fleet: FleetDep) -> WorkerOut:
    """A deployer worker announces itself and its capacity (GPU ids, CPU slots). The answer
    carries its `id`, the lease TTL and the heartbeat period it must keep."""
    return await fleet.register_worker(body)


@router.get(
    "",
    response_model=Page[WorkerOut],
    summary="List workers",
    responses=problem_responses(400, 422),
)
async def list_workers(
    fleet: FleetDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[WorkerOut]:
    """Registered workers, with their capacity, last heartbeat and whether they are live."""
    return await fleet.list_workers(cursor=cursor, limit=limit)


@router.post(
    "/{worker_id}/heartbeat",
    response_model=Assignments,
    summary="Worker heartbeat",
    responses=problem_responses(404, 422),
)
async def heartbeat_worker(
    worker_id: WorkerId, body: WorkerHeartbeat, request: Request, fleet: FleetDep
) -> Assignments:
    """Renew the worker and its leases, report its replicas' states (`pulling`, `failed`
    with a reason such as a sha256 mismatch, restarts), claim free replicas that fit its
    remaining capacity, and answer every replica leased to it with `desired` `run` or
    `stop`. A replica absent from the answer is no longer the worker's. 404: the worker
    lapsed (silent longer than the lease TTL); register again."""
    return await fleet.heartbeat(worker_id, body, str(request.base_url))


@router.get(
    "/{worker_id}/assignments",
    response_model=Assignments,
    summary="A worker's assignments",
    responses=problem_responses(404, 422),
)
async def get_worker_assignments(
    worker_id: WorkerId, request: Request, fleet: FleetDep
) -> Assignments:
    """The same answer as the heartbeat's, without side effects: the replicas leased to the
    worker, each with its version's files and their download URLs."""
    return await fleet.get_assignments(worker_id, str(request.base_url))
