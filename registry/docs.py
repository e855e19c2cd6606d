"""/docs and /redoc served from this process: no CDN (machines often run offline), and
the OpenAPI document declares the bearer API key so Swagger's "Authorize" button works.

The Swagger UI and ReDoc bundles come from the ``fastapi-offline`` wheel's static folder;
only its files are used, not its app factory (ours builds the FastAPI object itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
BEARER = "apiKey"


def install_docs(app: FastAPI, *, title: str) -> None:
    """Mount the bundles and the two pages (the app is built with ``docs_url=None,
    redoc_url=None``) and declare the bearer key in the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_bearer(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} API (Swagger UI)",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} API (ReDoc)",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def declare_bearer(schema: dict[str, Any]) -> dict[str, Any]:
    """Every ``/api/`` operation takes ``Authorization: Bearer mp_...``."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, `mp_...` (see the README's Security section).",
    }
    for path, item in schema.get("paths", {}).items():
        if path.startswith("/api/"):
            for op in item.values():
                op.setdefault("security", [{BEARER: []}])
    return schema
