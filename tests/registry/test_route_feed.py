"""The route feed over HTTP (auth off: the scope checks are in test_gateway_api.py): a
deployment's lanes as gateways see them (plain, split, shadow, mid rolling update), the
long poll (at once on another cursor, on a change, after ``wait_s`` unchanged), revoked keys
in the feed, and reports in → the ``/traffic`` series out; on SQLite and Postgres, each test
on a database of its own (the feed lists every deployment)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import httpx

from contract.traffic import BUCKETS, bucket
from registry.db import utcnow
from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deploy,
    deployable,
    get_deployment,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API, assert_problem
from tests.registry.traffic_support import serve

ROUTES = f"{API}/gateway/routes"


async def feed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    answer = await client.get(ROUTES, params=params)
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    return out


def route(feed: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [r for r in feed["routes"] if r["deployment"] == name]
    return found


def lanes(route: dict[str, Any]) -> list[tuple[int, int, str, float, int]]:
    """(revision, version, role, percent, number of endpoints) per lane."""
    return [
        (x["revision"], x["version"], x["role"], x["percent"], len(x["endpoints"]))
        for x in route["lanes"]
    ]


def endpoints_by_revision(deployment: dict[str, Any]) -> dict[int, set[str]]:
    """The URLs `announce` gave each revision's ready replicas."""
    out: dict[int, set[str]] = {}
    for r in deployment["observed"]["replicas"]:
        if r["state"] == "ready":
            out.setdefault(r["revision"], set()).add(f"http://127.0.0.1:9/{r['id']}")
    return out


async def test_a_plain_deployment_and_the_long_poll(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model)
    await deploy(client, model, name="web", version=v1, replicas=2)
    first = await feed(client)
    assert first["auth"] is False and first["revoked_keys"] == []
    web = route(first, "web")
    assert web["model"] == model
    assert lanes(web) == [(1, v1, "primary", 100, 0)]  # the current revision, no endpoint yet
    assert (await client.get(f"{API}/deployments/web/route")).json() == web
    # another cursor (or none): at once
    start = time.monotonic()
    assert (await feed(client, since="other", wait_s=20))["cursor"] == first["cursor"]
    assert time.monotonic() - start < 5
    # unchanged: after wait_s, the same feed
    start = time.monotonic()
    same = await feed(client, since=first["cursor"], wait_s=0.5)
    assert same == first and 0.45 <= time.monotonic() - start < 5
    # a change while a poll waits: it answers with the new table
    waiting = {"since": first["cursor"], "wait_s": 25}
    poll = asyncio.ensure_future(client.get(ROUTES, params=waiting))
    await asyncio.sleep(0.2)
    assert not poll.done()
    worker = await register_worker(client, cpu_slots=2)
    start = time.monotonic()
    deployment = await serve(client, worker, "web")
    changed = (await asyncio.wait_for(poll, 10)).json()
    assert time.monotonic() - start < 5
    assert changed["cursor"] != first["cursor"]
    # the poll may have answered on the first endpoint; the feed settles on both
    settled = await feed(client)
    assert lanes(route(settled, "web")) == [(1, v1, "primary", 100, 2)]
    assert (
        set(route(settled, "web")["lanes"][0]["endpoints"]) == endpoints_by_revision(deployment)[1]
    )
    # a rolling update: the new revision's ready endpoints share calls with the old ones'
    v2 = await deployable(client, model, b"v2")
    await client.patch(f"{API}/deployments/web", json={"version": v2})
    news = [
        r
        for r in (await get_deployment(client, "web"))["observed"]["replicas"]
        if r["revision"] == 2
    ]
    await heartbeat_and_announce(client, worker, news[:1])
    mid = route(await feed(client), "web")
    revisions = {lane[0]: lane for lane in lanes(mid)}
    assert mid["lanes"][0]["revision"] == 2  # the current revision first
    assert sum(lane[4] for lane in lanes(mid)) >= 1 and revisions[2][4] >= 1
    assert abs(sum(lane[3] for lane in lanes(mid)) - 100) < 1e-6


async def heartbeat_and_announce(
    client: httpx.AsyncClient, worker: str, replicas: list[dict[str, Any]]
) -> None:
    """The worker claims what it can and the given replicas' processes announce ready."""
    await client.post(f"{API}/workers/{worker}/heartbeat", json={"replicas": []})
    for replica in replicas:
        body = {
            "url": f"http://127.0.0.1:9/{replica['id']}",
            "replica_id": replica["id"],
            "status": "ready",
        }
        answer = await client.post(f"{API}/endpoints", json=body)
        assert answer.status_code in (201, 404), answer.text


async def test_split_and_shadow_lanes(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    await deploy(
        client,
        model,
        name="web",
        traffic=[{"version": v1, "percent": 90}, {"version": v2, "percent": 10}],
        shadow={"version": v3, "percent": 20},
    )
    worker = await register_worker(client, cpu_slots=8)
    deployment = await serve(client, worker, "web")
    urls = endpoints_by_revision(deployment)
    web = route(await feed(client), "web")
    assert web == (await client.get(f"{API}/deployments/web/route")).json()
    stored = [(x["revision"], x["version"], x["role"], x["percent"]) for x in deployment["lanes"]]
    assert [lane[:4] for lane in lanes(web)] == stored
    assert {x["role"] for x in web["lanes"]} == {"primary", "split", "shadow"}
    shares = {x["version"]: x["percent"] for x in web["lanes"]}
    assert shares == {v1: 90, v2: 10, v3: 20}
    for lane in web["lanes"]:  # each lane has its own revision's endpoints, and only those
        assert set(lane["endpoints"]) == urls[lane["revision"]], lane


async def test_a_revoked_key_is_in_the_feed_at_once(client: httpx.AsyncClient) -> None:
    created = await client.post(f"{API}/keys", json={"name": "k", "scopes": ["read"]})
    key = created.json()["id"]
    before = await feed(client)
    assert key not in before["revoked_keys"]
    poll = asyncio.ensure_future(
        client.get(ROUTES, params={"since": before["cursor"], "wait_s": 25})
    )
    await asyncio.sleep(0.2)
    start = time.monotonic()
    assert (await client.post(f"{API}/keys/{key}/revoke")).status_code == 200
    after = (await asyncio.wait_for(poll, 10)).json()
    assert key in after["revoked_keys"] and after["cursor"] != before["cursor"]
    assert time.monotonic() - start < 1.0


def histogram(**by_ms: int) -> list[int]:
    counts = [0] * BUCKETS
    for ms, n in by_ms.items():
        counts[bucket(float(ms.removeprefix("ms")))] += n
    return counts


async def test_reports_make_the_traffic_series(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    await deploy(
        client,
        model,
        name="web",
        traffic=[{"version": v1, "percent": 90}, {"version": v2, "percent": 10}],
    )
    ended = utcnow() - timedelta(seconds=65)  # in a whole bucket of the past
    report = {
        "gateway": "g1",
        "started_at": (ended - timedelta(seconds=1)).isoformat(),
        "ended_at": ended.isoformat(),
        "counts": [
            {
                "deployment": "web",
                "revision": 1,
                "calls": 1000,
                "errors": 10,
                "latency": histogram(ms10=980, ms300=20),
                "shadow_calls": 7,
                "shadow_disagreements": 2,
            },
            {"deployment": "web", "revision": 2, "calls": 50, "latency": histogram(ms40=50)},
            {"deployment": "gone", "revision": 1, "calls": 5, "latency": histogram(ms1=5)},
        ],
    }
    answer = await client.post(f"{API}/gateway/reports", json=report)
    assert answer.status_code == 204, answer.text
    second = {**report, "gateway": "g2", "counts": report["counts"][1:2]}  # another gateway
    assert (await client.post(f"{API}/gateway/reports", json=second)).status_code == 204
    series = (await client.get(f"{API}/deployments/web/traffic?minutes=5&bucket_s=10")).json()
    assert series["deployment"] == "web" and series["bucket_s"] == 10 and series["canary"] is None
    assert [(x["revision"], x["role"], x["percent"]) for x in series["lanes"]] == [
        (1, "primary", 90),
        (2, "split", 10),
    ]
    one, two = series["revisions"]
    assert (one["revision"], one["version"], one["role"]) == (1, v1, "primary")
    assert (two["revision"], two["version"], two["role"]) == (2, v2, "split")
    assert len(one["points"]) == 30  # 5 minutes of 10 s
    [busy] = [p for p in one["points"] if p["calls_per_s"]]
    assert busy["calls_per_s"] == 100.0  # 1000 calls in a 10 s bucket
    assert busy["error_rate"] == 0.01
    assert abs(busy["p50_ms"] - 10) <= 1.1 and abs(busy["p99_ms"] - 300) <= 30  # 10% buckets
    assert one["shadow_calls"] == 7 and one["shadow_disagreements"] == 2
    [busy2] = [p for p in two["points"] if p["calls_per_s"]]
    assert busy2["calls_per_s"] == 10.0 and busy2["error_rate"] == 0  # two gateways' 50 calls
    assert abs(busy2["p99_ms"] - 40) <= 4
    quiet = [p for p in one["points"] if not p["calls_per_s"]]
    assert all(p["error_rate"] is None and p["p99_ms"] is None for p in quiet)
    # windows and buckets are bounded; unknown deployments are 404
    traffic = f"{API}/deployments/web/traffic"
    for params in ({"minutes": 0}, {"minutes": 61}, {"bucket_s": 0.5}):
        assert_problem(await client.get(traffic, params=params), 422)
    assert_problem(await client.get(f"{API}/deployments/nope/traffic"), 404)
    assert_problem(await client.get(f"{API}/deployments/nope/route"), 404)
