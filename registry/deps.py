"""``Depends`` providers: services built per request from what hangs off ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from contract.schemas import SLUG, check_path
from registry.errors import InvalidPath
from registry.principal import principal_of
from registry.repositories.events import Actor
from registry.repositories.versions import Selector
from registry.request_ids import request_id_of
from registry.selectors import parse_selector
from registry.services.aliases import AliasService
from registry.services.catalog import CatalogService
from registry.services.context import Context
from registry.services.deployments import DeploymentService
from registry.services.files import FileService
from registry.services.fleet import FleetService
from registry.services.gc import GcService
from registry.services.keys import KeyService
from registry.services.route_feed import RouteFeedService
from registry.services.traffic_reports import TrafficReportService
from registry.services.webhooks import WebhookService


def context_of(request: Request) -> Context:
    """Services share this per-request context (a plain call: one dependency level less
    on every request, which the hot reads notice)."""
    state = request.app.state
    principal = principal_of(request.scope)
    actor = Actor(
        name=principal.name,
        request_id=request_id_of(request.scope),
        client=request.client.host if request.client else None,
        key_id=principal.key_id,
    )
    return Context(state.sessions, state.store, state.settings, actor, principal, state.metrics)


async def get_catalog(request: Request) -> CatalogService:
    return CatalogService(context_of(request), request.app.state.routes_changed)


async def get_aliases(request: Request) -> AliasService:
    return AliasService(context_of(request), request.app.state.routes_changed)


async def get_files(request: Request) -> FileService:
    return FileService(context_of(request), request.app.state.routes_changed)


async def get_selector(
    v: Annotated[str, Path(description="a version number, `latest`, or `@alias`")],
) -> Selector:
    return parse_selector(v)


async def get_file_path(
    path: Annotated[str, Path(description="the file's path in the version")],
) -> str:
    try:
        return check_path(path)
    except ValueError as exc:
        raise InvalidPath(f"invalid file path {path!r}: {exc}") from exc


CatalogDep = Annotated[CatalogService, Depends(get_catalog)]
AliasDep = Annotated[AliasService, Depends(get_aliases)]
FileDep = Annotated[FileService, Depends(get_files)]
SelectorDep = Annotated[Selector, Depends(get_selector)]
FilePathDep = Annotated[str, Depends(get_file_path)]
ModelNamePath = Annotated[str, Path(pattern=SLUG, description="the model's name")]
AliasPath = Annotated[str, Path(pattern=SLUG, description="the alias name, e.g. `production`")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


async def get_deployments(request: Request) -> DeploymentService:
    return DeploymentService(context_of(request), request.app.state.routes_changed)


async def get_fleet(request: Request) -> FleetService:
    return FleetService(context_of(request), request.app.state.routes_changed)


DeploymentDep = Annotated[DeploymentService, Depends(get_deployments)]
FleetDep = Annotated[FleetService, Depends(get_fleet)]
DeploymentNamePath = Annotated[str, Path(pattern=SLUG, description="the deployment's name")]


async def get_keys(request: Request) -> KeyService:
    ctx = context_of(request)
    return KeyService(ctx.sessions, ctx.actor, ctx.principal, request.app.state.route_feed.poke)


KeyDep = Annotated[KeyService, Depends(get_keys)]


async def get_route_feed(request: Request) -> RouteFeedService:
    return request.app.state.route_feed  # type: ignore[no-any-return]


async def get_traffic_reports(request: Request) -> TrafficReportService:
    return request.app.state.traffic_reports  # type: ignore[no-any-return]


RouteFeedDep = Annotated[RouteFeedService, Depends(get_route_feed)]
TrafficReportDep = Annotated[TrafficReportService, Depends(get_traffic_reports)]


async def get_webhooks(request: Request) -> WebhookService:
    return WebhookService(context_of(request))


async def get_gc(request: Request) -> GcService:
    return GcService(context_of(request))


WebhookDep = Annotated[WebhookService, Depends(get_webhooks)]
GcDep = Annotated[GcService, Depends(get_gc)]
