"""``/events``: the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from contract.schemas import DeploymentName, EventOut, ModelName, Page
from registry.deps import CatalogDep, Cursor, Limit
from registry.problems import problem_responses

router = APIRouter(prefix="/events", tags=["events"])


@router.get("", summary="List audit events", responses=problem_responses(400, 422))
async def list_events(
    catalog: CatalogDep,
    since: Annotated[
        datetime | None, Query(description="only events at or after this time")
    ] = None,
    model: Annotated[ModelName | None, Query(description="only events about this model")] = None,
    deployment: Annotated[
        DeploymentName | None,
        Query(
            description="only events about this deployment: its revisions, status, replicas "
            "and endpoints (events outlive it)"
        ),
    ] = None,
    action: Annotated[str | None, Query(description="e.g. `alias.moved`")] = None,
    order: Annotated[
        Literal["asc", "desc"], Query(description="`asc`: oldest first; `desc`: newest first")
    ] = "asc",
    target: Annotated[
        str | None, Query(description="only events with this target, e.g. `key:ID`")
    ] = None,
    key: Annotated[
        str | None, Query(description="only events of this API key (actor_key_id)")
    ] = None,
    request_id: Annotated[str | None, Query(description="only events of this request")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[EventOut]:
    """Every change and every denied request (`request.denied`), oldest first (`order=desc`:
    newest first, e.g. for "recent events"): who (actor, `actor_key_id`), what (action,
    target), before and after, the request id (`X-Request-ID`) and the client address.
    Append-only: no API edits or deletes events."""
    return await catalog.list_events(
        since=since,
        model=model,
        deployment=deployment,
        action=action,
        cursor=cursor,
        limit=limit,
        newest_first=order == "desc",
        target=target,
        key_id=key,
        request_id=request_id,
    )
