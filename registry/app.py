"""The control plane's FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from contract.paths import API_PREFIX
from registry.authentication import Authenticate
from registry.db import SessionFactory, make_engine, make_session_factory
from registry.denials import AuditDenials
from registry.docs import install_docs
from registry.embedded_gateway import EmbeddedGateway, ServeEmbedded
from registry.exit_signals import on_exit_signal
from registry.hardening import Hardening
from registry.jobs import Jobs
from registry.metrics import ControlPlaneMetrics, Observe
from registry.openapi_security import document_security
from registry.policy import authorize
from registry.problems import install_problem_handlers, use_problem_media_type
from registry.request_ids import RequestIds
from registry.routes import (
    aliases,
    deployments,
    endpoints,
    events,
    files,
    gateway,
    gc,
    health,
    keys,
    models,
    traffic,
    versions,
    webhooks,
    workers,
)
from registry.services.route_feed import RouteFeedService
from registry.services.traffic_reports import TrafficReportService
from registry.settings import Settings
from registry.ui import create_ui
from storage import open_store
from storage.base import ArtifactStore

DESCRIPTION = """Modelplane's registry: models, immutable numbered versions with
content-addressed files, aliases (`production`, `staging`) with history and rollback,
and the audit log. Errors are `application/problem+json` (RFC 9457)."""


def store_from_settings(settings: Settings) -> ArtifactStore:
    return open_store(
        settings.storage_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_access_key_id=settings.s3_access_key_id,
        s3_secret_access_key=settings.s3_secret_access_key,
        s3_path_style=settings.s3_path_style,
        s3_create_bucket=settings.s3_create_bucket,
        part_size=settings.multipart_part_size,
    )


def create_app(
    settings: Settings,
    *,
    sessions: SessionFactory | None = None,
    store: ArtifactStore | None = None,
) -> FastAPI:
    """The app; builds its own engine and store from ``settings`` unless given them."""
    engine: AsyncEngine | None = None
    if sessions is None:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pre_ping=settings.db_pool_pre_ping,
        )
        sessions = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        jobs = Jobs(
            sessions,
            app.state.store,
            settings,
            app.state.metrics,
            changed=lambda name: app.state.routes_changed(name),
        )
        jobs.start()
        try:
            # uvicorn's lifespan shutdown comes after every request ended: a signal to stop
            # ends the route feed's long polls first (their gateways ask another replica)
            with on_exit_signal(feed.drain):
                yield
        finally:
            feed.drain()
            await jobs.stop()
        await embedded.close()
        await feed.close()
        if engine is not None:
            await engine.dispose()

    app = FastAPI(
        title="Modelplane",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation id = function name
        dependencies=[Depends(authorize)],  # every route: the scopes POLICY gives it
        docs_url=None,  # /docs and /redoc: install_docs, served without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.store = store if store is not None else store_from_settings(settings)
    app.state.metrics = metrics = ControlPlaneMetrics()
    install_problem_handlers(app)
    use_problem_media_type(app)
    install_docs(app, title="Modelplane")
    document_security(app)
    templates = {route.name: route.path for route in health.router.routes}  # type: ignore[attr-defined]
    for module in (
        models, versions, files, aliases, events, deployments, endpoints, workers, keys,
        webhooks, gc, traffic, gateway,
    ):  # fmt: skip
        app.include_router(module.router, prefix=API_PREFIX)
        templates |= {r.name: API_PREFIX + r.path for r in module.router.routes}
    app.include_router(health.router)
    # The dashboard is its own small app: HTML pages and errors, outside the OpenAPI doc.
    app.mount("/ui", create_ui(API_PREFIX), name="ui")
    # /serve/... calls skip FastAPI's routing and its inner middleware entirely
    # the route table every gateway follows, and what they count
    feed = app.state.route_feed = RouteFeedService(sessions, settings)
    reports = app.state.traffic_reports = TrafficReportService(sessions)
    # told (after commit) the name of each deployment whose routes changed
    app.state.routes_changed = feed.poke
    # /serve/... calls go to the embedded gateway, past FastAPI's routing and inner middleware
    embedded = app.state.gateway = EmbeddedGateway(sessions, settings, feed, reports)
    app.add_middleware(ServeEmbedded, embedded=embedded)
    # API keys before any body is read
    app.add_middleware(Authenticate, sessions=sessions, settings=settings)
    # an audit event for every 401/403, whoever answered it
    app.add_middleware(AuditDenials, sessions=sessions)
    # one id per request: on the log records, in the audit events, answered back
    app.add_middleware(RequestIds)
    # header and body limits before anything else is looked at; browser-page headers
    app.add_middleware(Hardening, settings=settings)
    # metrics of every call (refused ones and /serve too)
    app.add_middleware(Observe, metrics=metrics, templates=templates)
    if origins := settings.cors_origin_list:  # off unless configured; outermost: preflights
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Range"],
            expose_headers=["X-Request-ID", "ETag", "Content-Range"],
            max_age=600,
        )
    return app
