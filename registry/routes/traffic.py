"""``/deployments/{name}/route`` and ``/traffic``: how a deployment's calls are routed now,
and what the gateways counted of them (the SDK's direct mode and the dashboard's charts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from contract.traffic import Route, TrafficSeries
from registry.deps import DeploymentNamePath, RouteFeedDep, TrafficReportDep
from registry.problems import problem_responses
from registry.services.traffic_reports import MAX_MINUTES

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.get(
    "/{name}/route",
    summary="Get a deployment's route",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_deployment_route(name: DeploymentNamePath, feed: RouteFeedDep) -> Route:
    """Its lanes (revision, version, role, share) with their ready endpoint URLs, as every
    gateway routes by: the SDK's direct mode balances over them itself."""
    return await feed.route(name)


@router.get(
    "/{name}/traffic",
    summary="Get a deployment's traffic series",
    responses=problem_responses(401, 403, 404, 422),
)
async def get_deployment_traffic(
    name: DeploymentNamePath,
    traffic: TrafficReportDep,
    minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES, description="the window")] = 15,
    bucket_s: Annotated[float, Query(ge=1, le=3600, description="one point per")] = 10.0,
) -> TrafficSeries:
    """Per revision that took calls in the last `minutes`: calls/s, error rate, p50 and p99
    per `bucket_s`, from every gateway's counts; shadow totals; the lanes and the canary
    now."""
    return await traffic.series(name, minutes, bucket_s)
