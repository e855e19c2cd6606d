"""``/gateway``: what gateway processes (``python -m gateway``, scope `gateway`) ask of the
control plane: the route feed (a long poll), key checks, and their traffic reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from contract.traffic import KeyCheck, KeyGrant, RouteFeed, TrafficReport
from registry.deps import KeyDep, RouteFeedDep, TrafficReportDep
from registry.problems import problem_responses
from registry.services.route_feed import MAX_WAIT_S

router = APIRouter(prefix="/gateway", tags=["gateway"])


@router.get(
    "/routes",
    summary="Follow the route table (long poll)",
    responses=problem_responses(401, 403, 422),
)
async def get_gateway_routes(
    feed: RouteFeedDep,
    request: Request,
    since: Annotated[
        str | None, Query(max_length=128, description="the cursor of the feed held")
    ] = None,
    wait_s: Annotated[
        float, Query(ge=0, description=f"how long to wait for a change (at most {MAX_WAIT_S:g})")
    ] = 25.0,
) -> RouteFeed:
    """Every deployment's lanes with their ready endpoints, whether keys are checked, and
    the keys revoked or expired within a day. Answered at once when the table's cursor is
    not `since`, else when it changes or after `wait_s` unchanged (or at once when this
    control plane begins to shut down: ask another)."""
    return await feed.long_poll(since, wait_s, lambda: _disconnected(request))


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (a GET's body is empty: nothing else reads it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/keys:verify",
    summary="Check an API key for a gateway",
    responses=problem_responses(401, 403, 422),
)
async def verify_gateway_key(body: KeyCheck, keys: KeyDep) -> KeyGrant:
    """The grant of a valid, unrevoked, unexpired key (its id, name, scopes, model globs and
    expiry), which the gateway keeps by the token's hash; 401 for any other token."""
    return await keys.grant(body.token)


@router.post(
    "/reports",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Report a gateway's traffic counts",
    responses=problem_responses(401, 403, 422),
)
async def report_gateway_traffic(body: TrafficReport, traffic: TrafficReportDep) -> Response:
    """Per-revision calls, errors, latency histogram and shadow counts since the gateway's
    last report; canaries are decided on them, the dashboard charts them. Counts of
    deployments that no longer exist are dropped."""
    await traffic.ingest(body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
