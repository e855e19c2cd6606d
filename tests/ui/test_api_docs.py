"""/docs and /redoc render in a browser with no internet: their bundles come from this
process, and Swagger's Authorize takes the bearer API key the OpenAPI document declares."""

from __future__ import annotations

from typing import Any

import httpx

from tests.ui.conftest import Dashboard, screenshot


def test_openapi_declares_the_bearer_key_on_api_operations(dashboard: Dashboard) -> None:
    schema = httpx.get(f"{dashboard.cp.url}/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/models"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_docs_pages_load_their_bundles_from_this_server(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.cp.url, timeout=10) as http:
        for page, bundle in (
            ("/docs", "/docs-assets/swagger-ui-bundle.js"),
            ("/redoc", "/docs-assets/redoc.standalone.js"),
        ):
            html = http.get(page).text
            assert bundle in html and "cdn" not in html.lower(), page
            asset = http.get(bundle)
            assert asset.status_code == 200 and len(asset.content) > 100_000, bundle


def test_swagger_and_redoc_render_every_operation_offline(
    browser: Any, dashboard: Dashboard
) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    outside: list[str] = []  # what the pages need to work: documents, scripts, styles, data
    needed = {"document", "script", "stylesheet", "fetch", "xhr"}

    def record(r: Any) -> None:
        if r.resource_type in needed and not r.url.startswith((dashboard.cp.url, "blob:")):
            outside.append(r.url)

    tab.on("request", record)
    try:
        tab.goto(f"{dashboard.cp.url}/docs")
        tab.wait_for_selector(".opblock", timeout=20_000)
        assert tab.locator(".opblock").count() >= 40
        assert tab.locator("button.authorize").count() == 1
        screenshot(tab, "swagger")
        tab.goto(f"{dashboard.cp.url}/redoc")
        tab.wait_for_selector("text=Modelplane", timeout=20_000)
        tab.wait_for_selector("[data-section-id^='tag/models']", timeout=20_000)
        screenshot(tab, "redoc")
    finally:
        context.close()
    assert outside == [], f"the docs pages fetched from outside this server: {outside}"
