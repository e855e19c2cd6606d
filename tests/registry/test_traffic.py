"""Fixed splits and shadows over HTTP: bad bodies (422 with the reason), lanes, side
revisions reused when nothing about them changes, a plain version change ending a split,
and side replicas stopping once no lane names them; on SQLite and Postgres."""

from __future__ import annotations

from typing import Any

import httpx

from tests.registry.deploying import (  # noqa: F401  (fixtures)
    database_url,
    deploy,
    deployable,
    get_deployment,
    pg_template,
    register_worker,
)
from tests.registry.helpers import API, assert_problem, create_version
from tests.registry.traffic_support import desired, lanes, revisions, serve


async def test_bad_traffic_and_shadow_bodies_are_refused(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    pending = (await create_version(client, model, {"w": b"pending"}))["version"]
    url = f"{API}/deployments"
    base = {"name": "d", "model": model}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"traffic": [{"version": v1, "percent": 90}, {"version": v2, "percent": 20}]}, "100"),
        ({"traffic": [{"version": v1, "percent": 50}, {"version": v1, "percent": 50}]}, "once"),
        ({"traffic": [{"version": v1, "percent": 100}], "version": v1}, "not both"),
        ({"traffic": []}, "at least one"),
        ({"version": v1, "strategy": {"canary": {"steps": [50, 10]}}}, "increase"),
        ({"version": v1, "shadow": {"version": v2, "percent": 0}}, "greater than 0"),
    ]
    for body, words in cases:
        problem = assert_problem(await client.post(url, json={**base, **body}), 422)
        assert words in str(problem), problem
    unknown = {"traffic": [{"version": v1, "percent": 60}, {"version": 99, "percent": 40}]}
    problem = assert_problem(
        await client.post(url, json={**base, **unknown}), 422, "unusable-versions"
    )
    assert "99 (no such version)" in problem["detail"]
    not_ready = {"traffic": [{"version": pending, "percent": 60}, {"version": v1, "percent": 40}]}
    problem = assert_problem(
        await client.post(url, json={**base, **not_ready}), 422, "unusable-versions"
    )
    assert f"{pending} (pending)" in problem["detail"]
    itself = {"version": v1, "shadow": {"version": v1, "percent": 10}}
    problem = assert_problem(
        await client.post(url, json={**base, **itself}), 422, "invalid-traffic"
    )
    assert "no test" in problem["detail"]
    ghost = {"version": v1, "shadow": {"version": 99, "percent": 10}}
    assert_problem(await client.post(url, json={**base, **ghost}), 422, "unusable-versions")
    assert (await client.get(f"{url}/d")).status_code == 404  # nothing was made

    await deploy(client, model, name="d", version=v1)
    patch = {"traffic": [{"version": v1, "percent": 50}, {"version": 99, "percent": 50}]}
    assert_problem(await client.patch(f"{url}/d", json=patch), 422, "unusable-versions")
    assert_problem(
        await client.patch(f"{url}/d", json={"shadow": {"version": v1, "percent": 5}}),
        422,
        "invalid-traffic",
    )
    plain = await get_deployment(client, "d")
    assert lanes(plain) == [(1, v1, "primary", 100)] and plain["revision"] == 1


async def test_a_split_makes_side_revisions_and_reuses_them(
    client: httpx.AsyncClient, model: str
) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    split = [{"version": v1, "percent": 90}, {"version": v2, "percent": 10, "replicas": 2}]
    created = await deploy(client, model, name="web", traffic=split)
    assert (created["revision"], created["version"], created["alias"]) == (1, v1, None)
    assert lanes(created) == [(1, v1, "primary", 90), (2, v2, "split", 10)]
    assert [(r["revision"], r["reason"]) for r in await revisions(client, "web")] == [
        (2, "split"),
        (1, "create"),
    ]
    worker = await register_worker(client, cpu_slots=8)
    web = await serve(client, worker, "web")
    assert web["status"] == "available"  # the primary's status
    assert desired(web, 1) == ["run"] and desired(web, 2) == ["run", "run"]

    url = f"{API}/deployments/web"
    even = [{"version": v1, "percent": 50}, {"version": v2, "percent": 50, "replicas": 2}]
    same = (await client.patch(url, json={"traffic": even})).json()
    assert lanes(same) == [(1, v1, "primary", 50), (2, v2, "split", 50)]  # ties: the first
    assert len(await revisions(client, "web")) == 2  # nothing restarted

    # the larger share moves to v2: a new primary; v1 keeps its live revision as a split
    swapped = [{"version": v1, "percent": 20}, {"version": v2, "percent": 80}]
    moved = (await client.patch(url, json={"traffic": swapped})).json()
    assert (moved["revision"], moved["version"]) == (3, v2)
    assert lanes(moved) == [(3, v2, "primary", 80), (1, v1, "split", 20)]
    web = await serve(client, worker, "web")
    assert desired(web, 1) == ["run"] and desired(web, 3) == ["run"]
    assert desired(web, 2) == []  # no lane names revision 2 any more: stopped
    assert lanes(web) == [(3, v2, "primary", 80), (1, v1, "split", 20)]


async def test_a_plain_version_change_ends_the_split(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    v3 = await deployable(client, model, b"3")
    split = [{"version": v1, "percent": 70}, {"version": v2, "percent": 30}]
    await deploy(client, model, name="web", traffic=split)
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "web")
    updated = (await client.patch(f"{API}/deployments/web", json={"version": v3})).json()
    assert (updated["revision"], updated["version"]) == (3, v3)
    # the old primary takes the calls until v3 is ready; the split's replica stops first
    # (one for one: no call reaches it any more)
    assert lanes(updated) == [(3, v3, "primary", 0), (1, v1, "primary", 100)]
    assert desired(updated, 1) == ["run"] and desired(updated, 2) == ["stop"]
    web = await serve(client, worker, "web")
    assert web["status"] == "available" and lanes(web) == [(3, v3, "primary", 100)]
    assert desired(web, 1) == [] and desired(web, 2) == []


async def test_a_shadow_is_added_kept_and_removed(client: httpx.AsyncClient, model: str) -> None:
    v1 = await deployable(client, model, b"1")
    v2 = await deployable(client, model, b"2")
    created = await deploy(
        client, model, name="web", version=v1, shadow={"version": v2, "percent": 20}
    )
    assert lanes(created) == [(1, v1, "primary", 100), (2, v2, "shadow", 20)]
    worker = await register_worker(client, cpu_slots=8)
    await serve(client, worker, "web")
    url = f"{API}/deployments/web"
    more = (await client.patch(url, json={"shadow": {"version": v2, "percent": 50}})).json()
    assert lanes(more) == [(1, v1, "primary", 100), (2, v2, "shadow", 50)]
    assert len(await revisions(client, "web")) == 2  # the same shadow revision
    scaled = (await client.patch(url, json={"replicas": 2})).json()  # absent: the shadow stays
    assert lanes(scaled) == [(3, v1, "primary", 0), (1, v1, "primary", 100), (2, v2, "shadow", 50)]
    web = await serve(client, worker, "web")
    assert lanes(web) == [(3, v1, "primary", 100), (2, v2, "shadow", 50)]
    removed = (await client.patch(url, json={"shadow": None})).json()
    assert lanes(removed) == [(3, v1, "primary", 100)]
    assert desired(removed, 2) == ["stop"] and desired(removed, 3) == ["run", "run"]
    assert [(r["revision"], r["reason"]) for r in await revisions(client, "web")] == [
        (3, "update"),
        (2, "shadow"),
        (1, "create"),
    ]
