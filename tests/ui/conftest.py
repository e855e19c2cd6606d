"""A real control plane with data made over the API, and Debian's Chromium driven by
Playwright (its own driver from the wheel; never `playwright install`, no download)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from bench.harness import REPO, ControlPlane
from contract.schemas import KeyCreate, Scope
from registry.services.keys import mint_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "ui"
# Keys beside the admin key: their names, and the scopes they hold.
KEYS = {"viewer": ["read"]}
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Dashboard:
    """The control plane, an API client on it, and what the fixture created."""

    cp: ControlPlane
    api: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)  # key name -> mp_… token
    files: dict[tuple[str, int], dict[str, bytes]] = field(default_factory=dict)

    @property
    def ui(self) -> str:
        return f"{self.cp.url}/ui"

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def send(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.api.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def upload(self, model: str, files: dict[str, bytes], **form: str) -> int:
        """One-shot upload (what `curl -F file=@…` does): a ready version."""
        parts = [("file", (path, data)) for path, data in files.items()]
        out = self.send("POST", f"/models/{model}/versions:upload", 201, files=parts, data=form)
        self.files[model, out["version"]] = files
        number: int = out["version"]
        return number

    def create(self, model: str, files: dict[str, bytes], **body: Any) -> int:
        """Manifest first, then each file's bytes, then finalize: the way to attach a
        signature and metadata."""
        manifest = [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]
        version = self.send(
            "POST", f"/models/{model}/versions", 201, json={"files": manifest, **body}
        )
        for f in version["files"]:
            if not f["present"]:
                url = urljoin(self.cp.url, f["upload"]["url"])
                self.send("PUT", url, content=files[f["path"]])
        number: int = version["version"]
        self.send("POST", f"/models/{model}/versions/{number}/finalize")
        self.files[model, number] = files
        return number

    def alias(self, model: str, alias: str) -> int:
        version: int = self.get(f"/models/{model}/aliases/{alias}")["version"]
        return version


def _populate(d: Dashboard) -> None:
    d.send(
        "POST",
        "/models",
        201,
        json={
            "name": "resnet",
            "description": "Image classifier.\nResNet-50 fine-tuned on our catalogue photos.",
            "tags": {"team": "vision", "task": "classification"},
        },
    )
    d.send("POST", "/models", 201, json={"name": "bert-small", "tags": {"team": "nlp"}})
    one = d.create(
        "resnet",
        {"model.pt": b"v1 weights " * 300, "config.json": b'{"classes": 1000}'},
        format="torchscript",
        description="first training run",
        metadata={"accuracy": 0.761, "dataset": "catalogue-2026-10", "epochs": 90},
        signature=SIGNATURE,
        source="s3://training/runs/1841",
    )
    two = d.upload("resnet", {"model.pt": b"v2 weights " * 400}, format="torchscript")
    d.send("PUT", "/models/resnet/aliases/production", json={"version": two})
    three = d.upload("resnet", {"model.pt": b"v3 weights " * 500}, format="torchscript")
    d.send("PUT", "/models/resnet/aliases/production", json={"version": three})
    d.send("PUT", "/models/resnet/aliases/staging", json={"version": one})
    bert = {"graph.pt": b"bert graph", "model.safetensors": b"bert"}
    d.upload("bert-small", bert, format="safetensors", alias="production")
    # Needs a GPU no worker offers: it stays pending, with the reason shown.
    d.send(
        "POST",
        "/deployments",
        201,
        json={"name": "resnet-prod", "model": "resnet", "version": two, "gpus": 1},
    )
    d.send("PATCH", "/deployments/resnet-prod", json={"version": three})


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """Auth on, as in production: the first admin key is minted in the database (what
    `modelplane keys create --offline` does), the others over the API."""
    home = tmp_path_factory.mktemp("ui")
    database_url = f"sqlite+aiosqlite:///{home / 'registry.db'}"
    settings = {
        "MODELPLANE_HOME": str(home),
        "MODELPLANE_DATABASE_URL": database_url,
        "MODELPLANE_AUTH_ENABLED": "true",
        "MODELPLANE_LEASE_TTL_S": "300",  # the test plays the worker; its leases must hold
    }
    cp = ControlPlane(home, settings)
    try:
        cp.wait_ready()
        admin = KeyCreate(name="admin", scopes=[Scope.admin])
        minted = asyncio.run(mint_key(database_url, admin, by="test"))
        headers = {"Authorization": f"Bearer {minted.token}"}
        with httpx.Client(base_url=cp.api, headers=headers, timeout=30) as api:
            d = Dashboard(cp, api, tokens={"admin": minted.token})
            for name, scopes in KEYS.items():
                body = {"name": name, "scopes": scopes}
                d.tokens[name] = d.send("POST", "/keys", 201, json=body)["token"]
            _populate(d)
            yield d
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        why = f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium when run as root"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def open_page(browser: Any, dashboard: Dashboard, key: str | None, test: str = "") -> Iterator[Any]:
    """A fresh browser context (its own localStorage) whose dashboard holds the API key
    `key` (a name in `dashboard.tokens`; None: no key); dialogs are accepted, and a page
    error (an uncaught exception in our JavaScript) fails the test."""
    storage: dict[str, Any] = {"cookies": [], "origins": []}
    if key is not None:
        saved = [{"name": "modelplane.apiKey", "value": dashboard.tokens[key]}]
        storage["origins"].append({"origin": dashboard.cp.url, "localStorage": saved})
    context = browser.new_context(viewport={"width": 1440, "height": 900}, storage_state=storage)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: dialog.accept())
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors in {test}: {errors}"


@pytest.fixture
def page(browser: Any, dashboard: Dashboard, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page whose dashboard holds the admin key."""
    with open_page(browser, dashboard, "admin", request.node.name) as tab:
        yield tab


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
