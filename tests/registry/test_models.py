"""Models over HTTP: register, search, page, update, delete, and bad input."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.registry.helpers import API, assert_problem, ready_version


async def test_create_model_answers_its_fields(client: httpx.AsyncClient) -> None:
    name = f"resnet-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "description": "# ResNet", "tags": {"team": "vision"}}
    response = await client.post(f"{API}/models", json=body)
    assert response.status_code == 201
    out = response.json()
    assert {k: out[k] for k in body} == body
    assert out["created_at"] and out["updated_at"]
    assert (await client.get(f"{API}/models/{name}")).json() == out


async def test_duplicate_model_is_409(client: httpx.AsyncClient, model: str) -> None:
    response = await client.post(f"{API}/models", json={"name": model})
    assert_problem(response, 409, "model-already-exists")


@pytest.mark.parametrize("name", ["", "Upper", "-dash", "a b", "x" * 64, "ü", "a/b"])
async def test_bad_model_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    body = assert_problem(await client.post(f"{API}/models", json={"name": name}), 422)
    assert body["errors"][0]["loc"] == ["body", "name"]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.get(f"{API}/models/nope-{uuid.uuid4().hex}"), 404, "model-not-found"
    )


async def test_bad_name_in_path_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/models/BAD"), 422, "validation-error")


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/models", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation-error")


async def test_wrong_content_type_is_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{API}/models", content=b"name=x", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 422)


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"{API}/nothing-here"), 404, "not-found")
    assert_problem(await client.put(f"{API}/models"), 405, "method-not-allowed")


async def test_list_models_pages_with_cursor(client: httpx.AsyncClient) -> None:
    prefix = f"pg-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}-{i:02d}" for i in range(5)]
    for n in names:
        assert (await client.post(f"{API}/models", json={"name": n})).status_code == 201
    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"q": prefix, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{API}/models", params=params)).json()
        seen += [m["name"] for m in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == names


async def test_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{API}/models", params={"cursor": "!!not-ours"})
    assert_problem(response, 400, "invalid-cursor")


async def test_search_by_substring_and_tags(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex[:8]
    await client.post(
        f"{API}/models", json={"name": f"bert-{key}", "tags": {"task": "nlp", "k": key}}
    )
    await client.post(
        f"{API}/models", json={"name": f"vit-{key}", "tags": {"task": "cv", "k": key}}
    )
    by_q = (await client.get(f"{API}/models", params={"q": f"bert-{key}"})).json()["items"]
    assert [m["name"] for m in by_q] == [f"bert-{key}"]
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("tag", f"k:{key}"),
        ("tag", "task:cv"),
    ]
    by_tag = (await client.get(f"{API}/models", params=params)).json()["items"]
    assert [m["name"] for m in by_tag] == [f"vit-{key}"]
    assert_problem(await client.get(f"{API}/models", params={"tag": "novalue"}), 400)


async def test_update_model(client: httpx.AsyncClient, model: str) -> None:
    response = await client.patch(f"{API}/models/{model}", json={"tags": {"a": "b"}})
    assert response.status_code == 200
    assert response.json()["tags"] == {"a": "b"}
    assert_problem(await client.patch(f"{API}/models/{model}", json={"name": "x"}), 422)


async def test_delete_model_with_alias_is_409_then_deletes(
    client: httpx.AsyncClient, model: str
) -> None:
    n = await ready_version(client, model, {"w": b"w"})
    await client.put(f"{API}/models/{model}/aliases/prod", json={"version": n})
    body = assert_problem(await client.delete(f"{API}/models/{model}"), 409, "model-has-aliases")
    assert body["aliases"] == ["prod"]
    await client.delete(f"{API}/models/{model}/aliases/prod")
    assert (await client.delete(f"{API}/models/{model}")).status_code == 204
    assert_problem(await client.get(f"{API}/models/{model}"), 404)
