"""``/gc``: garbage collection of unreferenced blobs and abandoned uploads, on demand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from contract.schemas import GcReport
from registry.deps import GcDep
from registry.problems import problem_responses

router = APIRouter(prefix="/gc", tags=["operations"])


@router.post("", summary="Collect garbage", responses=problem_responses(422, 503))
async def collect_garbage(
    gc: GcDep,
    dry_run: Annotated[
        bool, Query(description="only report what would be removed, remove nothing")
    ] = False,
) -> GcReport:
    """Remove blobs that no version, alias or deployment revision refers to (older than
    the grace period, `MODELPLANE_GC_GRACE_S`) and abort direct uploads abandoned for
    longer than `MODELPLANE_UPLOAD_TTL_S`. The answer lists what went (or, with
    `dry_run=true`, what would go) and the bytes freed. `skipped: true` means another
    control-plane replica was sweeping at that moment."""
    return await gc.collect(dry_run=dry_run)
