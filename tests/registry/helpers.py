"""Small helpers for registry tests: digests, manifests, versions made over HTTP."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

API = "/api/v1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "size": len(d), "sha256": sha(d)} for p, d in files.items()]


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"] and body["title"]
    if code is not None:
        assert body["type"] == f"/problems/{code}", body
    return body


async def create_version(
    client: httpx.AsyncClient, model: str, files: dict[str, bytes], **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/models/{model}/versions", json={"files": manifest(files), **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def ready_version(
    client: httpx.AsyncClient, model: str, files: dict[str, bytes], **extra: Any
) -> int:
    """Create, upload what is missing, finalize; the version number."""
    version = await create_version(client, model, files, **extra)
    for f in version["files"]:
        if not f["present"]:
            put = await client.put(f["upload"]["url"], content=files[f["path"]])
            assert put.status_code == 200, put.text
    done = await client.post(f"{API}/models/{model}/versions/{version['version']}/finalize")
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "ready"
    number: int = version["version"]
    return number
