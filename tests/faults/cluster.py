"""Processes and calls shared by the fault scenarios."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.platform import ControlPlane
from tests.support.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

API = "/api/v1"


def cp_env(database_url: str, storage_url: str, **extra: str) -> dict[str, str]:
    """MODELPLANE_* settings of a test control plane: auth off (these tests are not about
    it), a small pool (the shared Postgres has 100 connections for every helper's tests)."""
    env = {
        "MODELPLANE_DATABASE_URL": database_url,
        "MODELPLANE_STORAGE_URL": storage_url,
        "MODELPLANE_AUTH_ENABLED": "false",
        "MODELPLANE_DB_POOL_SIZE": "8",
    }
    env.update({f"MODELPLANE_{k.upper()}": v for k, v in extra.items()})
    return env


def s3_env(endpoint_url: str) -> dict[str, str]:
    return {
        "s3_endpoint_url": endpoint_url,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY_ID,
        "s3_secret_access_key": SECRET_ACCESS_KEY,
    }


def start_cp(log_dir: Path, env: dict[str, str], name: str = "cp") -> ControlPlane:
    """A control plane (``python -m client server --migrate``), its log in ``log_dir/name``."""
    (log_dir / name).mkdir(parents=True, exist_ok=True)
    return ControlPlane(log_dir / name, env).wait_ready()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]


def events(http: httpx.Client, model: str, action: str) -> list[dict[str, Any]]:
    """Every event of ``action`` on ``model``, oldest first."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"model": model, "action": action, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"{API}/events", params=params).json()
        out += page["items"]
        if not (cursor := page["next_cursor"]):
            return out


def alias_history(http: httpx.Client, model: str, alias: str) -> list[dict[str, Any]]:
    """Every move of the alias, oldest first."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = http.get(f"{API}/models/{model}/aliases/{alias}/history", params=params).json()
        out += page["items"]
        if not (cursor := page["next_cursor"]):
            return out[::-1]
