"""``/healthz`` and ``/readyz`` (no API prefix)."""

from __future__ import annotations

import logging
from datetime import timedelta

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import text

from contract.schemas import Health
from registry.db import reading, utcnow
from registry.metrics import CONTENT_TYPE, gauge
from registry.problems import problem_responses
from registry.repositories.stats import StatsRepository

log = logging.getLogger("modelplane.registry")
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
async def get_health() -> Health:
    """The process is up (no dependency is checked)."""
    return Health()


@router.get("/readyz", summary="Readiness", responses=problem_responses(503))
async def get_readiness(request: Request) -> Health:
    """The database answers `SELECT 1` and the artifact store answers; 503 otherwise."""
    async with request.app.state.sessions() as session:
        await session.execute(text("SELECT 1"))
    await to_thread.run_sync(request.app.state.store.check)
    return Health(checks={"database": "ok", "store": "ok"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "text exposition format"}},
)
async def get_metrics(request: Request) -> Response:
    """This process's counters and histograms (every process's, with several workers),
    and gauges read from the database now: replicas by state, endpoints, deployments and
    versions by status, live workers, webhook deliveries and the outbox. If the database
    is away the gauges are left out and `modelplane_database_up` is 0."""
    state = request.app.state
    database: list[Metric] = []
    up = GaugeMetricFamily("modelplane_database_up", "The database answered this scrape")
    try:
        async with reading(state.sessions) as session:
            stats = StatsRepository(session)
            since = utcnow() - timedelta(seconds=state.settings.lease_ttl_s)
            database += [
                gauge("modelplane_replicas", "Replicas by state", "state",
                      await stats.replicas_by_state()),
                gauge("modelplane_endpoints", "Endpoints by status", "status",
                      await stats.endpoints_by_status()),
                gauge("modelplane_deployments", "Deployments by status", "status",
                      await stats.deployments_by_status()),
                gauge("modelplane_versions", "Versions by status", "status",
                      await stats.versions_by_status()),
                gauge("modelplane_webhook_deliveries", "Webhook deliveries by status",
                      "status", await stats.deliveries_by_status()),
                GaugeMetricFamily("modelplane_workers_live", "Workers heartbeating",
                                  value=await stats.live_workers(since)),
                GaugeMetricFamily("modelplane_webhook_outbox_depth",
                                  "Events not yet fanned out to webhooks",
                                  value=await stats.outbox_depth()),
            ]  # fmt: skip
        up.add_metric([], 1)
    except Exception as exc:  # scrape what we can; the outage shows as database_up 0
        log.warning("metrics: database gauges unavailable: %r", exc)
        database = []
        up.add_metric([], 0)
    body = await to_thread.run_sync(state.metrics.render, [*database, up])
    return Response(body, media_type=CONTENT_TYPE)
