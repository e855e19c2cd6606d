from __future__ import annotations

import httpx

from tests.registry.helpers import API, ready_version


async def test_smoke(client: httpx.AsyncClient, model: str) -> None:
    n = await ready_version(client, model, {"w.bin": b"hello", "cfg/c.json": b"{}"})
    r = await client.get(f"{API}/models/{model}/versions/latest")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == n
    r = await client.get(f"{API}/models/{model}/versions/{n}/files/w.bin")
    assert r.content == b"hello"
