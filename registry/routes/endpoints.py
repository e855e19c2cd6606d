"""``/endpoints``: serving processes register, heartbeat and deregister themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from contract.schemas import EndpointHeartbeat, EndpointOut, EndpointRegister
from registry.deps import FleetDep
from registry.problems import problem_responses

router = APIRouter(prefix="/endpoints", tags=["endpoints"])
EndpointId = Annotated[str, Path(max_length=64, description="the endpoint's id")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointOut,
    summary="Register an endpoint",
    responses=problem_responses(404, 422),
)
async def register_endpoint(body: EndpointRegister, fleet: FleetDep) -> EndpointOut:
    """Called by a serving process as it starts, for the replica it fills (`replica_id`):
    its URL and status. An earlier endpoint of the same replica is replaced. 404 for an
    unknown replica."""
    return await fleet.register_endpoint(body)


@router.post(
    "/{endpoint_id}/heartbeat",
    response_model=EndpointOut,
    summary="Endpoint heartbeat",
    responses=problem_responses(404, 422),
)
async def heartbeat_endpoint(
    endpoint_id: EndpointId, body: EndpointHeartbeat, fleet: FleetDep
) -> EndpointOut:
    """Report the endpoint's status (and reason) on every transition and every heartbeat
    period. Only `ready` endpoints that heartbeat get calls through the stable URL. 404:
    not registered (register again)."""
    return await fleet.endpoint_heartbeat(endpoint_id, body)


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Deregister an endpoint",
    responses=problem_responses(404, 422),
)
async def deregister_endpoint(endpoint_id: EndpointId, fleet: FleetDep) -> Response:
    """Called by a serving process once drained, before it exits."""
    await fleet.delete_endpoint(endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
