"""Protected aliases, keys restricted to models by glob, and the audit log of a session."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from registry.db import SessionFactory
from tests.registry.helpers import API, assert_problem, manifest, ready_version
from tests.registry.security.conftest import Mint, bearer

ONLY_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- protected aliases ---------------------------------------------------------------------


async def test_protected_alias_moves_only_with_promote_or_admin(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    for data in (b"one", b"two", b"three"):
        await ready_version(as_admin, model, {"w.bin": data})
    url = f"{API}/models/{model}/aliases/production"
    writer, promoter = bearer(await mint("write")), bearer(await mint("promote"))
    assert (await anon.put(url, json={"version": 1}, headers=writer)).status_code == 200
    # marking it protected is itself a promote-level change
    denied = await anon.put(url, json={"version": 1, "protected": True}, headers=writer)
    assert_problem(denied, 403, "forbidden")
    marked = await anon.put(url, json={"version": 1, "protected": True}, headers=promoter)
    assert marked.status_code == 200 and marked.json()["protected"] is True
    body = assert_problem(await anon.put(url, json={"version": 2}, headers=writer), 403)
    assert "protected" in body["detail"]
    assert_problem(await anon.post(f"{url}/rollback", headers=writer), 403)
    assert_problem(await anon.delete(url, headers=writer), 403)
    assert (await anon.get(url, headers=writer)).json()["version"] == 1  # nothing moved
    moved = await anon.put(url, json={"version": 2}, headers=promoter)
    assert moved.status_code == 200 and moved.json() == {**moved.json(), "version": 2}
    assert (await as_admin.put(url, json={"version": 3})).status_code == 200
    assert (await anon.post(f"{url}/rollback", headers=promoter)).json()["version"] == 2
    # an unprotected alias of the same model still moves with write
    other = f"{API}/models/{model}/aliases/staging"
    assert (await anon.put(other, json={"version": 3}, headers=writer)).status_code == 200
    unmarked = await anon.put(url, json={"version": 2, "protected": False}, headers=promoter)
    assert unmarked.json()["protected"] is False
    assert (await anon.delete(url, headers=writer)).status_code == 204


async def test_one_shot_upload_cannot_move_a_protected_alias_without_promote(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    await ready_version(as_admin, model, {"w.bin": b"v1"})
    url = f"{API}/models/{model}/aliases/production"
    assert (await as_admin.put(url, json={"version": 1, "protected": True})).status_code == 200
    writer = bearer(await mint("write"))
    answer = await anon.post(
        f"{API}/models/{model}/versions:upload",
        files={"file": ("w.bin", b"v2")},
        data={"alias": "production"},
        headers=writer,
    )
    assert_problem(answer, 403, "forbidden")
    assert (await as_admin.get(url)).json()["version"] == 1


# --- keys restricted to models -------------------------------------------------------------


async def test_key_restricted_by_glob_reaches_only_matching_models(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint
) -> None:
    team = uuid.uuid4().hex[:6]
    mine, theirs = f"team-{team}-a-x", f"team-{team}-b-x"
    for name in (mine, theirs):
        assert (await as_admin.post(f"{API}/models", json={"name": name})).status_code == 201
        await ready_version(as_admin, name, {"w.bin": name.encode()})
    key = bearer(await mint("write", "deploy", model_globs=[f"team-{team}-a-*"]))
    assert (await anon.get(f"{API}/models/{mine}", headers=key)).status_code == 200
    for method, path in (
        ("GET", f"/models/{theirs}"),
        ("GET", f"/models/{theirs}/versions/1"),  # the fast read path too
        ("GET", f"/models/{theirs}/versions/1/files/w.bin"),
        ("GET", f"/models/{theirs}/aliases"),
        ("PATCH", f"/models/{theirs}"),
    ):
        kwargs: dict[str, Any] = {"json": {}} if method == "PATCH" else {}
        answer = await anon.request(method, API + path, headers=key, **kwargs)
        assert_problem(answer, 403, "forbidden")
    assert (await anon.get(f"{API}/models/{mine}/versions/1", headers=key)).status_code == 200
    listed = await anon.get(f"{API}/models", params={"q": team}, headers=key)
    assert [m["name"] for m in listed.json()["items"]] == [mine]
    denied = await anon.post(f"{API}/models", json={"name": f"team-{team}-b-new"}, headers=key)
    assert_problem(denied, 403)
    created = await anon.post(f"{API}/models", json={"name": f"team-{team}-a-new"}, headers=key)
    assert created.status_code == 201
    # deployments of other models: neither created, read, changed nor listed
    body = {"name": f"d-{team}-b", "model": theirs, "version": 1}
    assert_problem(await anon.post(f"{API}/deployments", json=body, headers=key), 403)
    assert (await as_admin.post(f"{API}/deployments", json=body)).status_code == 201
    assert_problem(await anon.get(f"{API}/deployments/d-{team}-b", headers=key), 403)
    assert_problem(await anon.delete(f"{API}/deployments/d-{team}-b", headers=key), 403)
    ok = {"name": f"d-{team}-a", "model": mine, "version": 1}
    assert (await anon.post(f"{API}/deployments", json=ok, headers=key)).status_code == 201
    names = [d["name"] for d in (await anon.get(f"{API}/deployments", headers=key)).json()["items"]]
    assert f"d-{team}-a" in names and f"d-{team}-b" not in names
    # the stable URL of another model's deployment
    call = await anon.post(f"/serve/d-{team}-b/v2/models/x/infer", json={}, headers=key)
    assert call.status_code == 403 and "error" in call.json()


async def test_restricted_keys_manage_no_keys_and_see_only_their_events(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint
) -> None:
    team = uuid.uuid4().hex[:6]
    restricted_admin = bearer(await mint("admin", model_globs=[f"t{team}-*"]))
    body = {"name": "wider", "scopes": ["admin"]}
    assert_problem(await anon.post(f"{API}/keys", json=body, headers=restricted_admin), 403)
    assert_problem(await anon.get(f"{API}/keys", headers=restricted_admin), 403)
    for name in (f"t{team}-in", f"u{team}-out"):
        assert (await as_admin.post(f"{API}/models", json={"name": name})).status_code == 201
    events = (await anon.get(f"{API}/events?limit=1000", headers=restricted_admin)).json()
    models = {e["model"] for e in events["items"]}
    assert models == {f"t{team}-in"}


# --- audit ---------------------------------------------------------------------------------


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await client.get(f"{API}/events", params={"limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_denied_requests_are_audited_with_key_and_reason(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    reader = await mint("read")
    rid = uuid.uuid4().hex
    answer = await anon.delete(
        f"{API}/models/{model}", headers={**bearer(reader), "X-Request-ID": rid}
    )
    assert_problem(answer, 403)
    [event] = await _events(as_admin, request_id=rid)
    assert event["action"] == "request.denied" and event["model"] == model
    assert event["actor_key_id"] == reader["id"] and event["actor"] == reader["name"]
    assert event["target"] == f"DELETE {API}/models/{model}"
    assert event["after"]["status"] == 403 and "admin" in event["after"]["detail"]
    assert event["client"]
    # no key at all, and a revoked key (named by its id though it no longer works)
    rid = uuid.uuid4().hex
    await anon.get(f"{API}/models/{model}", headers={"X-Request-ID": rid})
    [event] = await _events(as_admin, request_id=rid)
    assert (event["actor"], event["actor_key_id"]) == ("anonymous", None)
    assert event["after"]["status"] == 401
    assert (await as_admin.post(f"{API}/keys/{reader['id']}/revoke")).status_code == 200
    rid = uuid.uuid4().hex
    await anon.get(f"{API}/models/{model}", headers={**bearer(reader), "X-Request-ID": rid})
    [event] = await _events(as_admin, request_id=rid)
    assert event["actor_key_id"] == reader["id"] and "revoked" in event["after"]["detail"]


@ONLY_SQLITE
async def test_every_mutation_of_a_session_is_in_the_audit_log(
    anon: httpx.AsyncClient, mint: Mint
) -> None:
    """A scripted session over every kind of change, each call with its own request id:
    each has at least one event naming the key, the request and the client."""
    admin_key, worker_key = await mint("admin"), await mint("worker")
    calls: list[tuple[str, str, int]] = []  # (what, request id, status)

    async def call(key: dict[str, Any], method: str, path: str, **kwargs: Any) -> Any:
        rid = f"{method.lower()}-{uuid.uuid4().hex[:12]}"
        headers = {**bearer(key), "X-Request-ID": rid}
        answer = await anon.request(method, API + path, headers=headers, **kwargs)
        assert answer.status_code < 300, (method, path, answer.text)
        assert answer.headers["x-request-id"] == rid
        calls.append((f"{method} {path}", rid, answer.status_code))
        return answer.json() if answer.content else None

    name = _name()
    w1, w2 = b"weights one", b"weights two"
    await call(admin_key, "POST", "/models", json={"name": name})
    await call(admin_key, "PATCH", f"/models/{name}", json={"description": "d"})
    await call(
        admin_key, "POST", f"/models/{name}/versions", json={"files": manifest({"m.pt": w1})}
    )
    await call(admin_key, "PUT", f"/models/{name}/versions/1/files/m.pt", content=w1)
    await call(admin_key, "POST", f"/models/{name}/versions/1/finalize")
    await call(admin_key, "PATCH", f"/models/{name}/versions/1", json={"description": "v1"})
    await call(admin_key, "POST", f"/models/{name}/versions:upload", files={"file": ("m.pt", w2)})
    alias = f"/models/{name}/aliases/production"
    await call(admin_key, "PUT", alias, json={"version": 1})
    await call(admin_key, "PUT", alias, json={"version": 2, "protected": True})
    await call(admin_key, "POST", f"{alias}/rollback")
    deployment = {"name": f"d-{name}", "model": name, "version": 1}
    await call(admin_key, "POST", "/deployments", json=deployment)
    await call(admin_key, "PATCH", f"/deployments/d-{name}", json={"version": 2})
    await call(admin_key, "POST", f"/deployments/d-{name}/rollback", json={})
    worker_body = {"name": "w", "host": "h", "address": "127.0.0.1", "gpus": [], "cpu_slots": 2}
    worker = (await call(worker_key, "POST", "/workers", json=worker_body))["id"]
    assigned = await call(worker_key, "POST", f"/workers/{worker}/heartbeat", json={"replicas": []})
    replica = assigned["assignments"][0]["replica_id"]
    endpoint_body = {"url": "http://127.0.0.1:9/e", "replica_id": replica, "status": "loading"}
    endpoint = (await call(worker_key, "POST", "/endpoints", json=endpoint_body))["id"]
    await call(worker_key, "POST", f"/endpoints/{endpoint}/heartbeat", json={"status": "ready"})
    await call(worker_key, "DELETE", f"/endpoints/{endpoint}")
    await call(admin_key, "DELETE", f"/deployments/d-{name}")
    await call(admin_key, "DELETE", alias)
    await call(admin_key, "POST", f"/models/{name}/versions/2/archive")
    pending = {"files": manifest({"m.pt": b"never uploaded"})}
    await call(admin_key, "POST", f"/models/{name}/versions", json=pending)
    await call(admin_key, "DELETE", f"/models/{name}/versions/3")
    await call(admin_key, "POST", "/models", json={"name": f"{name}-gone"})
    await call(admin_key, "DELETE", f"/models/{name}-gone")
    created = await call(admin_key, "POST", "/keys", json={"name": "tmp", "scopes": ["read"]})
    await call(admin_key, "POST", f"/keys/{created['id']}/revoke")

    auditor = httpx.AsyncClient(transport=anon._transport, base_url=str(anon.base_url))
    async with auditor:
        auditor.headers.update(bearer(admin_key))
        missing = []
        for what, rid, _ in calls:
            events = await _events(auditor, request_id=rid)
            if not events:
                missing.append(what)
            for event in events:
                assert event["actor_key_id"] in (admin_key["id"], worker_key["id"]), event
                assert event["client"] and event["time"]
        assert missing == [], "mutations without an audit event"
        # events are filterable: by key, by action and paginated by cursor
        mine = await _events(auditor, key=worker_key["id"])
        assert mine and all(e["actor_key_id"] == worker_key["id"] for e in mine)
        first = (await auditor.get(f"{API}/events", params={"model": name, "limit": 2})).json()
        assert len(first["items"]) == 2 and first["next_cursor"]
        rest = await auditor.get(
            f"{API}/events", params={"model": name, "limit": 1000, "cursor": first["next_cursor"]}
        )
        assert rest.json()["items"][0]["id"] > first["items"][-1]["id"]


async def test_audit_events_cannot_be_changed_or_deleted(sessions: SessionFactory) -> None:
    """Append-only in the database too (a trigger), not only for lack of an API."""
    async with sessions.begin() as session:
        await session.execute(
            text("INSERT INTO events (time, actor, action) VALUES (CURRENT_TIMESTAMP, 't', 'x')")
        )
    for statement in ("UPDATE events SET actor = 'forged'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessions.begin() as session:
                await session.execute(text(statement))
