"""Scenario 1: 50 concurrent version creations and 50 concurrent alias moves on one model,
against a real control plane (two uvicorn worker processes) on Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.cluster import API, alias_history, cp_env, events, manifest, start_cp
from bench.harness import ControlPlane

pytestmark = pytest.mark.timeout(180)
N = 50
MODEL = "contended"


@pytest.fixture
def cp(pg_url: str, tmp_path: Path) -> Iterator[ControlPlane]:
    plane = start_cp(tmp_path, cp_env(pg_url, str(tmp_path / "artifacts"), workers="2"))
    try:
        yield plane
    finally:
        plane.stop()


async def _all(url: str, calls: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Every call at once, each on its own connection (spread over both worker processes)."""

    async def one(method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await http.request(method, path, **kwargs)

    return await asyncio.gather(*(one(m, p, k) for m, p, k in calls))


def test_50_concurrent_creations_and_alias_moves(cp: ControlPlane) -> None:
    http = httpx.Client(base_url=cp.url, timeout=30)
    assert http.post(f"{API}/models", json={"name": MODEL}).status_code == 201
    weights = {"w.bin": b"the same bytes for every version"}
    body = {"files": manifest(weights)}
    created = asyncio.run(
        _all(cp.url, [("POST", f"{API}/models/{MODEL}/versions", {"json": body})] * N)
    )
    assert [r.status_code for r in created] == [201] * N, [r.text for r in created][:3]
    assert sorted(r.json()["version"] for r in created) == list(range(1, N + 1))

    upload = http.put(f"{API}/models/{MODEL}/versions/1/files/w.bin", content=weights["w.bin"])
    assert upload.status_code == 200, upload.text
    finals = asyncio.run(
        _all(cp.url, [("POST", f"{API}/models/{MODEL}/versions/{v}/finalize", {}) for v in
                      range(1, N + 1)])
    )  # fmt: skip
    assert all(r.status_code == 200 and r.json()["status"] == "ready" for r in finals)
    listed = http.get(f"{API}/models/{MODEL}/versions", params={"limit": 1000}).json()["items"]
    assert sorted(v["version"] for v in listed) == list(range(1, N + 1))

    moves = asyncio.run(
        _all(cp.url, [("PUT", f"{API}/models/{MODEL}/aliases/production", {"json": {"version": v}})
                      for v in range(1, N + 1)])
    )  # fmt: skip
    assert [r.status_code for r in moves] == [200] * N, [r.text for r in moves][:3]
    history = alias_history(http, MODEL, "production")
    # A total order: every move starts where the one before it ended, and each write is in it once.
    assert len(history) == N
    assert history[0]["from_version"] is None
    for before, after in zip(history, history[1:], strict=False):
        assert after["from_version"] == before["to_version"], (before, after)
    assert sorted(h["to_version"] for h in history) == list(range(1, N + 1))
    # The audit log tells the same story in the same order.
    moved = events(http, MODEL, "alias.moved")
    assert [(e["before"], e["after"]) for e in moved] == [
        (h["from_version"], h["to_version"]) for h in history
    ]
    # The alias ends on the last write: the answer with the newest ETag.
    last = max(moves, key=lambda r: int(r.headers["etag"].strip('"')))
    alias = http.get(f"{API}/models/{MODEL}/aliases/production")
    assert alias.json()["version"] == last.json()["version"] == history[-1]["to_version"]
    assert alias.headers["etag"] == last.headers["etag"]
    assert len({r.headers["etag"] for r in moves}) == N


def test_concurrent_conditional_moves_exactly_one_wins(cp: ControlPlane) -> None:
    http = httpx.Client(base_url=cp.url, timeout=30)
    assert http.post(f"{API}/models", json={"name": MODEL}).status_code == 201
    for v in range(1, N + 1):
        data = {"w.bin": f"weights {v}".encode()}
        out = http.post(f"{API}/models/{MODEL}/versions", json={"files": manifest(data)}).json()
        http.put(out["files"][0]["upload"]["url"], content=data["w.bin"])
        assert http.post(f"{API}/models/{MODEL}/versions/{v}/finalize").status_code == 200
    first = http.put(f"{API}/models/{MODEL}/aliases/production", json={"version": 1})
    etag = first.headers["etag"]

    tries = asyncio.run(
        _all(cp.url, [("PUT", f"{API}/models/{MODEL}/aliases/production",
                       {"json": {"version": v}, "headers": {"If-Match": etag}})
                      for v in range(2, N + 1)])
    )  # fmt: skip
    won = [r for r in tries if r.status_code == 200]
    lost = [r for r in tries if r.status_code == 412]
    assert len(won) == 1 and len(lost) == N - 2, sorted(r.status_code for r in tries)
    for r in lost:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == "/problems/precondition-failed"
        assert r.json()["etag"] == won[0].headers["etag"]
    alias = http.get(f"{API}/models/{MODEL}/aliases/production").json()
    assert alias["version"] == won[0].json()["version"]
    history = alias_history(http, MODEL, "production")
    assert [(h["from_version"], h["to_version"]) for h in history] == [
        (None, 1),
        (1, won[0].json()["version"]),
    ]
