"""Aliases over HTTP: set, resolve, list, history, rollback, delete; and the audit log."""

from __future__ import annotations

import httpx

from tests.registry.helpers import API, assert_problem, create_version, ready_version


def alias_url(model: str, alias: str = "production") -> str:
    return f"{API}/models/{model}/aliases/{alias}"


async def test_set_and_resolve_alias(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"w": b"1"})
    response = await client.put(alias_url(model), json={"version": n})
    assert response.status_code == 200
    out = response.json()
    assert out["model"] == model and out["alias"] == "production" and out["version"] == n
    assert (await client.get(alias_url(model))).json() == out
    listed = (await client.get(f"{API}/models/{model}/aliases")).json()
    assert listed == {"items": [out], "next_cursor": None}


async def test_alias_to_pending_or_missing_version(client: httpx.AsyncClient, model: str) -> None:
    pending = await create_version(client, model, {"w": b"p"})
    r = await client.put(alias_url(model), json={"version": pending["version"]})
    assert_problem(r, 409, "version-not-ready")
    assert_problem(await client.put(alias_url(model), json={"version": 99}), 404)
    assert_problem(await client.put(alias_url(model), json={"version": "x"}), 422)
    assert_problem(await client.put(alias_url(model, "Bad Alias"), json={"version": 1}), 422)
    assert_problem(
        await client.put(alias_url("ghost"), json={"version": 1}), 404, "model-not-found"
    )
    assert_problem(await client.get(alias_url(model)), 404, "alias-not-found")


async def test_history_and_rollback(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    assert_problem(await client.post(alias_url(model) + "/rollback"), 404, "alias-not-found")
    await client.put(alias_url(model), json={"version": one})
    assert_problem(await client.post(alias_url(model) + "/rollback"), 409, "alias-has-no-history")
    await client.put(alias_url(model), json={"version": two})
    rolled = await client.post(alias_url(model) + "/rollback")
    assert rolled.status_code == 200 and rolled.json()["version"] == one
    resolved = await client.get(f"{API}/models/{model}/versions/@production")
    assert resolved.json()["version"] == one
    history = (await client.get(alias_url(model) + "/history")).json()["items"]
    moves = [(h["from_version"], h["to_version"]) for h in history]
    assert moves == [(two, one), (one, two), (None, one)]
    assert all(h["actor"] == "anonymous" for h in history)


async def test_delete_alias_keeps_history(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"w": b"1"})
    await client.put(alias_url(model, "staging"), json={"version": n})
    assert (await client.delete(alias_url(model, "staging"))).status_code == 204
    assert_problem(await client.get(alias_url(model, "staging")), 404)
    assert_problem(await client.delete(alias_url(model, "staging")), 404)
    history = (await client.get(alias_url(model, "staging") + "/history")).json()["items"]
    assert [(h["from_version"], h["to_version"]) for h in history] == [(n, None), (None, n)]


async def test_every_change_is_an_event(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"w": model.encode()})
    await client.put(alias_url(model), json={"version": n}, headers={"X-Request-ID": "req-42"})
    page = (await client.get(f"{API}/events", params={"model": model})).json()
    actions = [e["action"] for e in page["items"]]
    assert actions == [
        "model.created",
        "version.created",
        "file.uploaded",
        "version.ready",
        "alias.moved",
    ]
    moved = page["items"][-1]
    assert moved["request_id"] == "req-42" and moved["actor"] == "anonymous"
    assert moved["target"] == "alias:production" and moved["after"] == n
    assert moved["before"] is None and moved["client"]
    only = await client.get(f"{API}/events", params={"model": model, "action": "alias.moved"})
    assert [e["action"] for e in only.json()["items"]] == ["alias.moved"]


async def test_events_page_and_since(client: httpx.AsyncClient, model: str) -> None:
    for i in range(3):
        await create_version(client, model, {"w": bytes([i])})
    first = (await client.get(f"{API}/events", params={"model": model, "limit": 2})).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await client.get(
        f"{API}/events", params={"model": model, "limit": 2, "cursor": first["next_cursor"]}
    )
    ids = [e["id"] for e in first["items"] + rest.json()["items"]]
    assert ids == sorted(ids) and len(ids) == 4
    since = first["items"][1]["time"]
    later = (await client.get(f"{API}/events", params={"model": model, "since": since})).json()
    assert {e["id"] for e in later["items"]} >= {ids[1], ids[2], ids[3]}
    assert_problem(await client.get(f"{API}/events", params={"since": "yesterday"}), 422)


async def test_events_newest_first_pages_backwards(client: httpx.AsyncClient, model: str) -> None:
    for i in range(3):
        await create_version(client, model, {"w": bytes([i])})
    params: dict[str, str | int] = {"model": model, "order": "desc", "limit": 2}
    first = (await client.get(f"{API}/events", params=params)).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await client.get(f"{API}/events", params={**params, "cursor": first["next_cursor"]})
    newest = [e["id"] for e in first["items"] + rest.json()["items"]]
    oldest = (await client.get(f"{API}/events", params={"model": model})).json()["items"]
    assert newest == [e["id"] for e in reversed(oldest)] and len(newest) == 4
    assert rest.json()["next_cursor"] is None
    assert_problem(await client.get(f"{API}/events", params={"order": "sideways"}), 422)


async def test_if_match_moves_only_an_unmoved_alias(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    created = await client.put(alias_url(model), json={"version": one})
    got = await client.get(alias_url(model))
    etag = got.headers["etag"]
    assert etag == created.headers["etag"] and etag.startswith('"')

    moved = await client.put(alias_url(model), json={"version": two}, headers={"If-Match": etag})
    assert moved.status_code == 200, moved.text
    assert moved.headers["etag"] != etag
    stale = await client.put(alias_url(model), json={"version": one}, headers={"If-Match": etag})
    problem = assert_problem(stale, 412, "precondition-failed")
    assert problem["etag"] == moved.headers["etag"]
    assert (await client.get(alias_url(model))).json()["version"] == two

    listed = f'"nope", {moved.headers["etag"]}'
    again = await client.put(alias_url(model), json={"version": one}, headers={"If-Match": listed})
    assert again.status_code == 200 and again.json()["version"] == one
    weak = await client.put(
        alias_url(model), json={"version": two}, headers={"If-Match": "W/" + again.headers["etag"]}
    )
    assert_problem(weak, 412, "precondition-failed")


async def test_if_match_star_and_if_none_match_star(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    star = {"If-Match": "*"}
    assert_problem(await client.put(alias_url(model), json={"version": one}, headers=star), 412)
    assert_problem(await client.get(alias_url(model)), 404, "alias-not-found")
    create_only = {"If-None-Match": "*"}
    created = await client.put(alias_url(model), json={"version": one}, headers=create_only)
    assert created.status_code == 200, created.text
    taken = await client.put(alias_url(model), json={"version": two}, headers=create_only)
    problem = assert_problem(taken, 412, "precondition-failed")
    assert problem["etag"] == created.headers["etag"]
    moved = await client.put(alias_url(model), json={"version": two}, headers=star)
    assert moved.status_code == 200 and moved.json()["version"] == two


async def test_a_move_to_the_same_version_keeps_the_etag(
    client: httpx.AsyncClient, model: str
) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    first = await client.put(alias_url(model), json={"version": one})
    same = await client.put(
        alias_url(model), json={"version": one}, headers={"If-Match": first.headers["etag"]}
    )
    assert same.status_code == 200 and same.headers["etag"] == first.headers["etag"]
    assert same.json() == first.json()
    history = (await client.get(alias_url(model) + "/history")).json()["items"]
    assert len(history) == 1


async def test_if_match_guards_rollback_and_delete(client: httpx.AsyncClient, model: str) -> None:
    one = await ready_version(client, model, {"w": b"1"})
    two = await ready_version(client, model, {"w": b"2"})
    first = await client.put(alias_url(model), json={"version": one})
    second = await client.put(alias_url(model), json={"version": two})
    stale = {"If-Match": first.headers["etag"]}
    assert_problem(await client.post(alias_url(model) + "/rollback", headers=stale), 412)
    assert_problem(await client.delete(alias_url(model), headers=stale), 412)
    fresh = {"If-Match": second.headers["etag"]}
    rolled = await client.post(alias_url(model) + "/rollback", headers=fresh)
    assert rolled.status_code == 200 and rolled.json()["version"] == one
    assert_problem(await client.delete(alias_url(model), headers=fresh), 412)
    gone = await client.delete(alias_url(model), headers={"If-Match": rolled.headers["etag"]})
    assert gone.status_code == 204


def test_alias_routes_document_etag_and_412() -> None:
    from registry.app import create_app
    from registry.settings import Settings

    schema = create_app(Settings()).openapi()
    put = schema["paths"]["/api/v1/models/{name}/aliases/{alias}"]["put"]
    assert "ETag" in put["responses"]["200"]["headers"]
    assert "412" in put["responses"]
    assert {p["name"] for p in put["parameters"]} >= {"if-match", "if-none-match"}
