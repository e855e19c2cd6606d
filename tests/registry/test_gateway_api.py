"""The gateway-facing API with authentication on: `/gateway/...` is for keys of scope
`gateway` (or `admin`) only, the key check answers grants of valid keys and 401 for any
other token, `/deployments/{name}/route` and `/traffic` keep to the read scope and the key's
model globs; and the embedded gateway refuses a revoked key on the next call, audited."""

# ruff: noqa: F811  (the security package's fixtures, imported, are these tests' arguments)

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from registry.db import SessionFactory
from registry.tables import ApiKeyRow
from tests.registry.helpers import API, assert_problem
from tests.registry.security.conftest import (  # noqa: F401  (fixtures)
    Mint,
    admin,
    anon,
    app,
    as_admin,
    auth_settings,
    bearer,
    mint,
)

NOW = datetime.now(UTC).replace(microsecond=0)
REPORT = {
    "gateway": "g1",
    "started_at": (NOW - timedelta(seconds=1)).isoformat(),
    "ended_at": NOW.isoformat(),
    "counts": [],
}


async def test_gateway_routes_take_gateway_and_admin_keys_only(
    anon: httpx.AsyncClient, mint: Mint
) -> None:
    read, worker, gateway, admin_key = [
        bearer(await mint(scope)) for scope in ("read", "worker", "gateway", "admin")
    ]
    some_key = await mint("read")
    calls: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("GET", f"{API}/gateway/routes", None, 200),
        ("POST", f"{API}/gateway/keys:verify", {"token": some_key["token"]}, 200),
        ("POST", f"{API}/gateway/reports", REPORT, 204),
    ]
    for method, url, body, ok in calls:
        assert_problem(await anon.request(method, url, json=body), 401)
        for refused in (read, worker):
            assert_problem(await anon.request(method, url, json=body, headers=refused), 403)
        for allowed in (gateway, admin_key):
            answer = await anon.request(method, url, json=body, headers=allowed)
            assert answer.status_code == ok, (url, answer.text)
    feed = (await anon.get(f"{API}/gateway/routes", headers=gateway)).json()
    assert feed["auth"] is True


async def test_key_checks_answer_grants_of_valid_keys_only(
    anon: httpx.AsyncClient, mint: Mint, sessions: SessionFactory, admin: dict[str, str]
) -> None:
    gateway = bearer(await mint("gateway"))
    url = f"{API}/gateway/keys:verify"
    later = (NOW + timedelta(days=1)).isoformat()
    key = await mint("write", model_globs=["team-a-*"], expires_at=later)
    answer = await anon.post(url, json={"token": key["token"]}, headers=gateway)
    assert answer.status_code == 200, answer.text
    grant = answer.json()
    assert grant == {
        "key_id": key["id"],
        "name": key["name"],
        "scopes": ["write"],
        "model_globs": ["team-a-*"],
        "expires_at": grant["expires_at"],
    }
    assert datetime.fromisoformat(grant["expires_at"]) == datetime.fromisoformat(later)
    assert key["token"] not in answer.text
    used = await anon.get(f"{API}/keys/{key['id']}", headers=admin)
    assert used.json()["last_used_at"] is not None  # a use, as on the API
    # revoked, expired, unknown, malformed: 401, the same problem
    revoked = await mint("read")
    await anon.post(f"{API}/keys/{revoked['id']}/revoke", headers=admin)
    expired = await mint("read")
    async with sessions.begin() as session:
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == expired["id"])
            .values(expires_at=NOW - timedelta(seconds=1))
        )
    unknown = "mp_" + "0" * 12 + "x" * 43
    for token in (revoked["token"], expired["token"], unknown, "nonsense"):
        assert_problem(await anon.post(url, json={"token": token}, headers=gateway), 401)
    assert_problem(await anon.post(url, json={}, headers=gateway), 422)
    # the feed names the revoked and the expired key
    feed = (await anon.get(f"{API}/gateway/routes", headers=gateway)).json()
    assert {revoked["id"], expired["id"]} <= set(feed["revoked_keys"])
    assert key["id"] not in feed["revoked_keys"]


async def test_route_and_traffic_keep_to_read_and_model_globs(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint
) -> None:
    team = uuid.uuid4().hex[:6]
    name = f"team-{team}-m"
    assert (await as_admin.post(f"{API}/models", json={"name": name})).status_code == 201
    files = {"file": ("model.pt", b"weights")}
    upload = await as_admin.post(
        f"{API}/models/{name}/versions:upload", files=files, data={"format": "torchscript"}
    )
    assert upload.status_code == 201, upload.text
    deployment = f"d-{team}"
    body = {"name": deployment, "model": name, "version": 1}
    assert (await as_admin.post(f"{API}/deployments", json=body)).status_code == 201
    urls = [f"{API}/deployments/{deployment}/route", f"{API}/deployments/{deployment}/traffic"]
    mine = bearer(await mint("read", model_globs=[f"team-{team}-*"]))
    theirs = bearer(await mint("read", model_globs=["other-*"]))
    for url in urls:
        assert_problem(await anon.get(url), 401)
        for refused in (theirs, bearer(await mint("worker")), bearer(await mint("gateway"))):
            assert_problem(await anon.get(url, headers=refused), 403)
        for allowed in (mine, bearer(await mint("read")), bearer(await mint("deploy"))):
            answer = await anon.get(url, headers=allowed)
            assert answer.status_code == 200, (url, answer.text)
    route = (await anon.get(urls[0], headers=mine)).json()
    assert route["deployment"] == deployment and route["model"] == name
    assert [(x["revision"], x["role"], x["endpoints"]) for x in route["lanes"]] == [
        (1, "primary", [])
    ]


async def test_the_embedded_gateway_refuses_a_revoked_key_on_its_next_call(
    anon: httpx.AsyncClient, as_admin: httpx.AsyncClient, mint: Mint, admin: dict[str, str]
) -> None:
    key = await mint("read")
    url = "/serve/nothing-here/v2/models/m/infer"
    answer = await anon.post(url, json={}, headers=bearer(key))
    assert answer.status_code == 404  # past the key check: no such deployment
    revoked = await anon.post(f"{API}/keys/{key['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    answer = await anon.post(url, json={}, headers=bearer(key))
    assert answer.status_code == 401 and "error" in answer.json()
    assert answer.headers["www-authenticate"] == "Bearer"
    events = (await as_admin.get(f"{API}/events?limit=1000")).json()["items"]
    denied = [e for e in events if e["action"] == "request.denied" and url in e["target"]]
    assert denied and denied[-1]["after"]["status"] == 401
