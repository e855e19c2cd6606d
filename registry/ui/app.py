"""A Starlette app mounted at ``/ui``, apart from the API: its pages are HTML, its errors
are HTML pages (not problem+json), and it is not part of the OpenAPI document.

Pages render no registry data on the server. Each one is a shell naming what it shows (a
model, a version, a deployment, taken from the URL) and ``static/app.js`` fetches the data
from the JSON API with the API key kept in the browser's ``localStorage``. With auth on,
a page therefore loads for anyone but shows data only to a key that may read it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from contract.paths import API_PREFIX
from contract.schemas import SLUG

HERE = Path(__file__).parent
NAME = re.compile(SLUG)
_BARE_SLUG = SLUG.removeprefix("^").removesuffix("$")
# What the API's ``{v}`` accepts: a number, ``latest`` or ``@alias``.
SELECTOR = re.compile(rf"[1-9][0-9]{{0,17}}|latest|@{_BARE_SLUG}")
# Pages run only our own script and style, and talk only to their own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset_version(directory: Path) -> str:
    """A digest of the static files: their URLs change whenever their content does."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


class Dashboard:
    def __init__(self, api_prefix: str) -> None:
        self.api_prefix = api_prefix
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.asset_version = _asset_version(HERE / "static")

    def render(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **page: Any,
    ) -> Response:
        ui_root = request.scope.get("root_path", "").rstrip("/")  # where we are mounted
        app_root = request.scope.get("app_root_path", "").rstrip("/")
        context = {
            "ui": ui_root,
            "api": app_root + self.api_prefix,
            "docs": app_root + "/docs",
            "redoc": app_root + "/redoc",
            "asset_version": self.asset_version,
            **page,
        }
        return self.templates.TemplateResponse(
            request,
            template,
            context,
            status_code=status_code,
            headers={**SECURITY_HEADERS, **(headers or {})},
        )

    async def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", page="overview", title="Overview")

    async def models(self, request: Request) -> Response:
        return self.render(request, "models.html", page="models", title="Models")

    async def model(self, request: Request) -> Response:
        name = _slug(request, "name")
        return self.render(request, "model.html", page="model", title=name, model=name)

    async def version(self, request: Request) -> Response:
        name = _slug(request, "name")
        selector = request.path_params["version"]
        if not SELECTOR.fullmatch(selector):
            raise HTTPException(404, f"{selector!r} is not a version number, latest or @alias")
        title = f"{name} {selector}"
        return self.render(
            request, "version.html", page="version", title=title, model=name, version=selector
        )

    async def deployments(self, request: Request) -> Response:
        return self.render(request, "deployments.html", page="deployments", title="Deployments")

    async def deployment(self, request: Request) -> Response:
        name = _slug(request, "name")
        return self.render(
            request, "deployment.html", page="deployment", title=name, deployment=name
        )

    async def events(self, request: Request) -> Response:
        return self.render(request, "events.html", page="events", title="Events")

    async def error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.render(
            request,
            "error.html",
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),  # e.g. Allow on a 405
            page="error",
            title="Not found" if exc.status_code == 404 else "Error",
            status=exc.status_code,
            detail=exc.detail,
        )


def _slug(request: Request, param: str) -> str:
    value: str = request.path_params[param]
    if not NAME.fullmatch(value):
        raise HTTPException(404, f"{value!r} is not a valid name")
    return value


def create_ui(api_prefix: str = API_PREFIX) -> Starlette:
    """The dashboard app; mount it at ``/ui`` beside the API served under ``api_prefix``."""
    ui = Dashboard(api_prefix)
    routes = [
        Route("/", ui.overview, name="overview"),
        Route("/models", ui.models, name="models"),
        Route("/models/{name}", ui.model, name="model"),
        Route("/models/{name}/versions/{version}", ui.version, name="version"),
        Route("/deployments", ui.deployments, name="deployments"),
        Route("/deployments/{name}", ui.deployment, name="deployment"),
        Route("/events", ui.events, name="events"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: ui.error})
