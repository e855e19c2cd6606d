"""API keys and scopes, with authentication on: every route has a policy and keeps to it."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import text

from registry.app import create_app
from registry.db import SessionFactory
from registry.fastpath import FastVersionReads
from registry.policy import POLICY, is_public_path
from registry.settings import Settings
from storage import FileSystemArtifactStore
from tests.registry.helpers import API, assert_problem, ready_version
from tests.registry.security.conftest import SCOPES, Mint, bearer

# --- the policy table covers every route ---------------------------------------------------


def _operations(app: FastAPI) -> list[tuple[str, str, str]]:
    return [
        (method.upper(), path, op["operationId"])
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
    ]


def test_every_route_has_an_access_policy(app: FastAPI) -> None:
    operations = _operations(app)
    assert len(operations) >= 40
    missing = [
        f"{method} {path} ({op})"
        for method, path, op in operations
        if op not in POLICY and not is_public_path(path)
    ]
    assert missing == [], "routes without an entry in registry.policy.POLICY"
    # the app's own routes outside the OpenAPI document (/docs, /redoc) need a policy too
    own = {route.name for route in app.routes if isinstance(route, APIRoute)}
    assert own - set(POLICY) == set(), "routes without an entry in registry.policy.POLICY"
    # and no stale entries: every policy names a route that exists
    assert set(POLICY) <= own | {op for _, _, op in operations}


_PARAMS = {
    "name": "nobody",
    "v": "1",
    "path": "f.bin",
    "alias": "prod",
    "worker_id": "w0",
    "endpoint_id": "e0",
    "key_id": "0" * 32,
    "webhook_id": "0" * 32,
}


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: _PARAMS[m.group(1)], path)


async def test_each_scope_is_allowed_exactly_where_the_policy_says(
    app: FastAPI, anon: httpx.AsyncClient, mint: Mint
) -> None:
    """Walks every operation with no key and with a key of each single scope: no key is 401,
    a scope outside the route's rule 403, one inside it gets past authorization."""
    keys = {scope: bearer(await mint(scope)) for scope in SCOPES}
    for method, path, op in _operations(app):
        rule = POLICY.get(op, frozenset())
        url = _concrete(path)
        kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        if not rule:
            answer = await anon.request(method, url, **kwargs)
            assert answer.status_code not in (401, 403), (op, answer.text)
            continue
        answer = await anon.request(method, url, **kwargs)
        assert_problem(answer, 401, "unauthenticated")
        assert answer.headers["www-authenticate"] == "Bearer"
        for scope, headers in keys.items():
            answer = await anon.request(method, url, headers=headers, **kwargs)
            effective = {scope} | ({"read"} if scope in ("write", "deploy", "promote") else set())
            allowed = scope == "admin" or bool(effective & {s.value for s in rule})
            if allowed:
                assert answer.status_code not in (401, 403), (op, scope, answer.text)
            else:
                body = assert_problem(answer, 403, "forbidden")
                assert f"k-{scope}" in body["detail"], body


# --- keys: tokens, revocation, expiry --------------------------------------------------------


async def test_created_token_is_shown_once_and_only_its_hash_is_stored(
    anon: httpx.AsyncClient, admin: dict[str, str], sessions: SessionFactory
) -> None:
    created = await anon.post(
        f"{API}/keys", json={"name": "ci", "scopes": ["read", "write"]}, headers=admin
    )
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["token"]
    assert token.startswith("mp_") and len(token) == 58 and body["prefix"] == token[:15]
    listed = await anon.get(f"{API}/keys", headers=admin)
    assert token not in listed.text and "token" not in listed.json()["items"][0]
    got = await anon.get(f"{API}/keys/{body['id']}", headers=admin)
    assert got.status_code == 200 and "token" not in got.json()
    async with sessions() as session:
        row = (
            await session.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": body["id"]})
        ).one()
    assert token not in [str(v) for v in row]
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()


async def test_revoked_key_fails_on_its_next_request_on_every_replica(
    auth_settings: Settings,
    sessions: SessionFactory,
    fs_artifacts: FileSystemArtifactStore,
    anon: httpx.AsyncClient,
    admin: dict[str, str],
    mint: Mint,
    model: str,
) -> None:
    key = await mint("read")
    other = create_app(auth_settings, sessions=sessions, store=fs_artifacts)  # a second replica
    transport = httpx.ASGITransport(app=FastVersionReads(other), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica2") as replica2:
        assert (await replica2.get(f"{API}/models/{model}", headers=bearer(key))).status_code == 200
        revoked = await anon.post(f"{API}/keys/{key['id']}/revoke", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        answer = await replica2.get(f"{API}/models/{model}", headers=bearer(key))
        body = assert_problem(answer, 401, "unauthenticated")
        assert "revoked" in body["detail"]
    again = await anon.post(f"{API}/keys/{key['id']}/revoke", headers=admin)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    listed = (await anon.get(f"{API}/keys", headers=admin)).json()["items"]
    assert key["id"] not in [k["id"] for k in listed]
    with_revoked = (await anon.get(f"{API}/keys?revoked=true", headers=admin)).json()["items"]
    assert key["id"] in [k["id"] for k in with_revoked]


async def test_expired_key_is_401(anon: httpx.AsyncClient, mint: Mint, model: str) -> None:
    soon = await mint("read", expires_at=datetime.now(UTC) + timedelta(hours=1))
    past = await mint("read", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert (await anon.get(f"{API}/models/{model}", headers=bearer(soon))).status_code == 200
    body = assert_problem(await anon.get(f"{API}/models/{model}", headers=bearer(past)), 401)
    assert "expired" in body["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer mp_nonsense",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "mp_" + "0" * 55,
        "Bearer",
    ],
)
async def test_malformed_or_unknown_tokens_are_401(
    anon: httpx.AsyncClient, model: str, header: str
) -> None:
    answer = await anon.get(f"{API}/models/{model}", headers={"Authorization": header})
    assert_problem(answer, 401, "unauthenticated")


async def test_a_worker_key_cannot_read_aliases_or_create_keys(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    worker = bearer(await mint("worker"))
    await ready_version(as_admin, model, {"w.bin": b"weights"})
    assert_problem(await anon.get(f"{API}/models/{model}/aliases", headers=worker), 403)
    body = {"name": "escalate", "scopes": ["admin"]}
    assert_problem(await anon.post(f"{API}/keys", json=body, headers=worker), 403)
    # what a worker does need: its artifact downloads
    download = await anon.get(f"{API}/models/{model}/versions/1/files/w.bin", headers=worker)
    assert download.status_code == 200 and download.content == b"weights"


async def test_fast_read_path_enforces_keys(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    await ready_version(as_admin, model, {"a.bin": b"a"})
    url = f"{API}/models/{model}/versions/1"
    assert_problem(await anon.get(url), 401)
    assert_problem(await anon.get(url, headers=bearer(await mint("worker"))), 403)
    read = await anon.get(url, headers=bearer(await mint("read")))
    assert read.status_code == 200 and read.json()["version"] == 1
    assert read.headers["x-request-id"]


async def test_request_id_is_taken_from_the_caller_and_echoed(
    anon: httpx.AsyncClient, admin: dict[str, str], model: str
) -> None:
    answer = await anon.get(f"{API}/models/{model}", headers={**admin, "X-Request-ID": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    odd = await anon.get(f"{API}/models/{model}", headers={**admin, "X-Request-ID": "a b\tc"})
    assert odd.headers["x-request-id"] != "a b\tc" and len(odd.headers["x-request-id"]) == 32


async def test_public_routes_need_no_key(anon: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"):
        assert (await anon.get(path)).status_code == 200, path


async def test_stable_url_needs_a_read_key(anon: httpx.AsyncClient, mint: Mint) -> None:
    url = "/serve/nothing/v2/models/nothing/infer"
    answer = await anon.post(url, json={})
    assert answer.status_code == 401 and "error" in answer.json()
    answer = await anon.post(url, json={}, headers=bearer(await mint("worker")))
    assert answer.status_code == 403 and "error" in answer.json()
    answer = await anon.post(url, json={}, headers=bearer(await mint("read")))
    assert answer.status_code == 404  # past auth: no such deployment


async def test_key_bodies_are_validated(anon: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x", "scopes": ["read"], "model_globs": ["../etc"]},
        {"name": "x", "scopes": ["read"], "expires_at": "2030-01-01T00:00:00"},
        {"name": "x", "scopes": ["read"], "extra": 1},
    ):
        assert_problem(await anon.post(f"{API}/keys", json=body, headers=admin), 422)
    assert_problem(await anon.get(f"{API}/keys/{'f' * 32}", headers=admin), 404, "key-not-found")


def test_offline_cli_mints_a_working_key(auth_settings: Settings, tmp_path: Path) -> None:
    """`modelplane keys create --offline` needs no server and prints only the token."""
    if not auth_settings.is_sqlite:
        pytest.skip("one database is enough for the CLI")
    env = {"MODELPLANE_DATABASE_URL": auth_settings.database_url, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--name", "first",
         "--scopes", "admin", "--offline"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert re.fullmatch(r"mp_[0-9a-f]{12}[A-Za-z0-9_-]{43}", token), run.stdout


async def test_a_route_without_a_policy_is_refused_and_ui_pages_are_public(
    app: FastAPI, anon: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    """Fail closed: an API route nobody gave a policy answers 403 even to an admin key,
    while the dashboard's pages (/ui) load without a key."""

    @app.get("/api/v1/unlisted")
    async def unlisted_route() -> dict[str, str]:
        return {"leak": "yes"}

    body = assert_problem(await anon.get(f"{API}/unlisted", headers=admin), 403, "forbidden")
    assert "no access policy" in body["detail"]
    page = await anon.get("/ui/models")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


async def test_the_hot_version_read_answers_only_a_key_that_may_read_it(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, model: str
) -> None:
    """`GET …/versions/{v}` has a fast path (the key check rides along its one statement):
    a reading key gets the same version as from the app; any other caller gets the app's
    401/403, audited as `request.denied` with its request id."""
    await ready_version(as_admin, model, {"a.bin": b"a"})
    url = f"{API}/models/{model}/versions/1"
    expected = (await as_admin.get(url)).json()
    reader, worker = await mint("read"), await mint("worker")
    narrow = await mint("read", model_globs=["zzz-*"])
    answer = await anon.get(url, headers=bearer(reader))
    assert answer.status_code == 200 and answer.json() == expected
    wrong = reader["token"][:-1] + ("A" if reader["token"][-1] != "A" else "B")
    assert (await as_admin.post(f"{API}/keys/{reader['id']}/revoke")).status_code == 200
    callers = {
        "no key": ({}, 401),
        "a worker key": (bearer(worker), 403),
        "a key for other models": (bearer(narrow), 403),
        "a wrong token": ({"Authorization": f"Bearer {wrong}"}, 401),
        "a revoked key": (bearer(reader), 401),
    }
    for caller, (headers, status) in callers.items():
        rid = uuid.uuid4().hex
        answer = await anon.get(url, headers={**headers, "X-Request-ID": rid})
        assert_problem(answer, status)
        events = await as_admin.get(f"{API}/events", params={"request_id": rid})
        [event] = events.json()["items"]
        assert event["action"] == "request.denied", caller
        assert event["after"]["status"] == status, caller
