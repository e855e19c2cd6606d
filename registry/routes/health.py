"""``/healthz`` and ``/readyz`` (no API prefix)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from sqlalchemy import text

from registry.problems import problem_responses
from registry.schemas import Health

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
