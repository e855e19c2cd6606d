"""Versions over HTTP: numbering, manifests, finalize, selectors, update, archive, delete."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx
import pytest

from tests.registry.helpers import (
    API,
    assert_problem,
    create_version,
    manifest,
    ready_version,
    sha,
)


async def test_concurrent_creates_number_1_to_50(client: httpx.AsyncClient, model: str) -> None:
    body = {"files": manifest({"w": b"same"})}
    responses = await asyncio.gather(
        *(client.post(f"{API}/models/{model}/versions", json=body) for _ in range(50))
    )
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses][:3]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 51))


async def test_create_version_says_what_to_upload(client: httpx.AsyncClient, model: str) -> None:
    await ready_version(client, model, {"a.pt": b"stored already"})
    files = {"a.pt": b"stored already", "dir/b.safetensors": b"new bytes"}
    out = await create_version(
        client,
        model,
        files,
        format="safetensors",
        tags={"k": "v"},
        metadata={"acc": 0.9},
        source="s3://runs/1",
        signature={"inputs": []},
    )
    assert out["status"] == "pending" and out["version"] == 2
    assert out["format"] == "safetensors" and out["metadata"] == {"acc": 0.9}
    assert out["created_by"] == "anonymous"
    present = {f["path"]: f for f in out["files"]}
    assert present["a.pt"]["present"] is True and present["a.pt"]["upload"] is None
    upload = present["dir/b.safetensors"]["upload"]
    assert present["dir/b.safetensors"]["present"] is False
    assert upload == {
        "method": "PUT",
        "url": f"{API}/models/{model}/versions/2/files/dir/b.safetensors",
        "multipart": None,
    }


async def test_all_present_version_finalizes_at_once(client: httpx.AsyncClient, model: str) -> None:
    await ready_version(client, model, {"w": b"w1"})
    out = await create_version(client, model, {"copy": b"w1"})
    assert all(f["present"] for f in out["files"])
    done = await client.post(f"{API}/models/{model}/versions/{out['version']}/finalize")
    assert done.json()["status"] == "ready"


async def test_finalize_with_missing_files_is_409(client: httpx.AsyncClient, model: str) -> None:
    out = await create_version(client, model, {"x": b"x", "y": b"y"})
    response = await client.post(f"{API}/models/{model}/versions/{out['version']}/finalize")
    body = assert_problem(response, 409, "files-missing")
    assert body["missing"] == ["x", "y"]
    assert (await client.get(f"{API}/models/{model}/versions/1")).json()["status"] == "pending"


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a\\b", "a\x00b", "a//b", "./a", "a/", "", "x" * 1025]
)
async def test_bad_manifest_path_is_422(client: httpx.AsyncClient, model: str, path: str) -> None:
    body = {"files": [{"path": path, "size": 1, "sha256": sha(b"x")}]}
    response = await client.post(f"{API}/models/{model}/versions", json=body)
    problem = assert_problem(response, 422, "validation-error")
    assert problem["errors"][0]["loc"][:3] == ["body", "files", 0]
    assert (await client.get(f"{API}/models/{model}/versions")).json()["items"] == []


@pytest.mark.parametrize(
    "files",
    [
        [{"path": "a", "size": -1, "sha256": "0" * 64}],
        [{"path": "a", "size": 1, "sha256": "xyz"}],
        [
            {"path": "a", "size": 1, "sha256": "0" * 64},
            {"path": "a", "size": 1, "sha256": "0" * 64},
        ],
        [],
    ],
)
async def test_bad_manifest_is_422(
    client: httpx.AsyncClient, model: str, files: list[object]
) -> None:
    response = await client.post(f"{API}/models/{model}/versions", json={"files": files})
    assert_problem(response, 422)


async def test_version_of_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/models/ghost/versions", json={"files": manifest({"a": b""})}
    )
    assert_problem(response, 404, "model-not-found")
    assert_problem(await client.get(f"{API}/models/ghost/versions/1"), 404, "model-not-found")


async def test_selectors(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    await create_version(client, model, {"w": b"3"})  # pending: never latest
    await client.put(f"{API}/models/{model}/aliases/production", json={"version": one})

    def get(v: str | int) -> Awaitable[httpx.Response]:
        return client.get(f"{API}/models/{model}/versions/{v}")

    assert (await get("latest")).json()["version"] == two
    assert (await get("@production")).json()["version"] == one
    assert (await get("3")).json()["status"] == "pending"
    assert_problem(await get("4"), 404, "version-not-found")
    assert_problem(await get("@staging"), 404, "version-not-found")
    for bad in ("newest", "-1", "@Bad", "1.5"):
        assert_problem(await get(bad), 400, "invalid-version-selector")


async def test_list_versions_newest_first_with_cursor(
    client: httpx.AsyncClient, model: str
) -> None:
    for i in range(5):
        await create_version(client, model, {"w": bytes([i])})
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"{API}/models/{model}/versions", params=params)).json()
        seen += [v["version"] for v in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    ready = await client.get(f"{API}/models/{model}/versions", params={"status": "ready"})
    assert ready.json()["items"] == []


async def test_ready_version_accepts_only_description_and_tags(
    client: httpx.AsyncClient, model: str
) -> None:
    n = await ready_version(client, model, {"w": b"w"})
    url = f"{API}/models/{model}/versions/{n}"
    response = await client.patch(url, json={"description": "better", "tags": {"x": "y"}})
    assert response.status_code == 200
    assert response.json()["description"] == "better" and response.json()["tags"] == {"x": "y"}
    assert_problem(await client.patch(url, json={"metadata": {"a": 1}}), 409, "version-immutable")
    assert_problem(await client.patch(url, json={"files": []}), 422)


async def test_pending_version_metadata_can_change(client: httpx.AsyncClient, model: str) -> None:
    out = await create_version(client, model, {"w": b"w"})
    url = f"{API}/models/{model}/versions/{out['version']}"
    assert (await client.patch(url, json={"metadata": {"a": 1}})).json()["metadata"] == {"a": 1}


async def test_archived_version_is_not_latest(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    archived = await client.post(f"{API}/models/{model}/versions/{two}/archive")
    assert archived.json()["status"] == "archived"
    latest = await client.get(f"{API}/models/{model}/versions/latest")
    assert latest.json()["version"] == one
    assert (await client.get(f"{API}/models/{model}/versions/{two}")).status_code == 200


async def test_delete_version_pointed_at_by_alias_is_409(
    client: httpx.AsyncClient, model: str
) -> None:
    n = await ready_version(client, model, {"w": b"w"})
    await client.put(f"{API}/models/{model}/aliases/prod", json={"version": n})
    body = assert_problem(
        await client.delete(f"{API}/models/{model}/versions/{n}"), 409, "version-has-aliases"
    )
    assert body["aliases"] == ["prod"]
    assert_problem(await client.post(f"{API}/models/{model}/versions/{n}/archive"), 409)


async def test_deleted_version_is_gone_and_its_number_not_reused(
    client: httpx.AsyncClient, model: str
) -> None:
    n = await ready_version(client, model, {"w": b"shared"})
    assert (await client.delete(f"{API}/models/{model}/versions/{n}")).status_code == 204
    assert_problem(await client.get(f"{API}/models/{model}/versions/{n}"), 404)
    again = await create_version(client, model, {"w": b"shared"})
    assert again["version"] == n + 1
    assert again["files"][0]["present"] is True  # the shared blob was not deleted
