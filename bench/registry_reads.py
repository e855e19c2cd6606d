"""Registry read path and version-creation rate, against a real server on Postgres.

    .venv/bin/python -m bench.registry_reads [--models 100] [--versions 50] [--duration 10]
        [--workers 2 | --workers 1,2,3] [--pool-size N] [--auth on,off]

Seeds MODELS x VERSIONS ready versions through the REST API (each version's manifest names
one already-stored file, then finalize; the first 500 are timed one after another), points
`production` at a random version of each model, then drives
`GET /api/v1/models/{name}/versions/@production` with wrk at concurrency 1, 16 and 64 over
random models, and prints req/s, p50 and p99 of each. The server runs with the production
settings the README documents (`modelplane server`, uvicorn with uvloop + httptools).
With `--auth on,off` (the default) the reads run with authentication on (an admin key on
every call, checked against the database each time) and off, side by side, and the ratio
shows what the per-request key check costs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench._common import ControlPlane, mint_admin, require_wrk, throwaway_postgres

WARMUP_SECONDS = 2
LUA = """
math.randomseed(os.time())
wrk.headers["Authorization"] = "%s"
request = function()
  local i = math.random(0, %d)
  return wrk.format("GET", "/api/v1/models/bench-" .. i .. "/versions/@production")
end
"""


def seed(url: str, models: int, versions: int, headers: dict[str, str]) -> float:
    """Create everything; returns versions/s of the first 500 sequential creations."""
    blob = os.urandom(4096)
    digest = hashlib.sha256(blob).hexdigest()
    manifest = {
        "files": [{"path": "model.pt", "size": len(blob), "sha256": digest}],
        "format": "torchscript",
    }
    with httpx.Client(base_url=f"{url}/api/v1", timeout=30, headers=headers) as c:
        for m in range(models):
            c.post("/models", json={"name": f"bench-{m}"}).raise_for_status()
        first = c.post("/models/bench-0/versions", json=manifest)
        first.raise_for_status()
        c.put("/models/bench-0/versions/1/files/model.pt", content=blob).raise_for_status()
        c.post("/models/bench-0/versions/1/finalize").raise_for_status()
        todo = [(m, v) for m in range(models) for v in range(versions)][1:]
        timed, rest = todo[:500], todo[500:]
        start = time.perf_counter()
        for m, _ in timed:
            _create_ready(c, f"bench-{m}", manifest)
        rate = len(timed) / (time.perf_counter() - start)
    asyncio.run(_seed_rest(url, rest, manifest, headers))
    with httpx.Client(base_url=f"{url}/api/v1", timeout=30, headers=headers) as c:
        for m in range(models):
            target = random.randint(1, versions)
            c.put(
                f"/models/bench-{m}/aliases/production", json={"version": target}
            ).raise_for_status()
    return rate


def _create_ready(c: httpx.Client, name: str, manifest: dict[str, object]) -> None:
    r = c.post(f"/models/{name}/versions", json=manifest)
    r.raise_for_status()
    c.post(f"/models/{name}/versions/{r.json()['version']}/finalize").raise_for_status()


async def _seed_rest(
    url: str, todo: list[tuple[int, int]], manifest: dict[str, object], headers: dict[str, str]
) -> None:
    queue = list(todo)

    async def one(c: httpx.AsyncClient) -> None:
        while queue:
            m, _ = queue.pop()
            r = await c.post(f"/models/bench-{m}/versions", json=manifest)
            r.raise_for_status()
            v = r.json()["version"]
            (await c.post(f"/models/bench-{m}/versions/{v}/finalize")).raise_for_status()

    async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=30, headers=headers) as c:
        await asyncio.gather(*(one(c) for _ in range(8)))


def wrk(url: str, lua: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        [
            require_wrk(),
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def measure_reads(url: str, lua: Path, duration: int, label: str) -> dict[int, float]:
    """req/s by concurrency."""
    # Unreported warm-up at the highest concurrency: every worker's pool fills and its
    # statement caches are primed before anything is measured.
    wrk(url, lua, 64, WARMUP_SECONDS)
    rates = {}
    for conns in (1, 16, 64):
        r = wrk(url, lua, conns, duration)
        rates[conns] = r["rps"]
        print(
            f"{label:>22} {conns:>11} {r['rps']:>9,.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
            f"{int(r['non2xx']):>8}"
        )
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--versions", type=int, default=50)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument(
        "--workers",
        default="2",
        help="control-plane worker processes; a list (1,2,3) measures each in turn",
    )
    ap.add_argument("--pool-size", type=int, default=None, help="database pool per worker")
    ap.add_argument(
        "--auth", default="on,off", help="authentication on, off, or both (on,off) in turn"
    )
    args = ap.parse_args()
    auths = [a.strip() == "on" for a in args.auth.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    require_wrk()
    with tempfile.TemporaryDirectory() as tmp, throwaway_postgres() as db:
        env = {
            "MODELPLANE_DATABASE_URL": db,
            "MODELPLANE_STORAGE_URL": f"{tmp}/artifacts",
            "MODELPLANE_HOME": tmp,
        }
        if args.pool_size is not None:
            env["MODELPLANE_DB_POOL_SIZE"] = str(args.pool_size)
        lua = Path(tmp) / "reads.lua"
        runs = [(n, auth) for n in workers for auth in auths]
        rates: dict[tuple[int, bool], dict[int, float]] = {}
        for i, (n, auth) in enumerate(runs):
            env["MODELPLANE_AUTH_ENABLED"] = "true" if auth else "false"
            cp = ControlPlane(env, workers=n, log=Path(tmp) / f"server-{n}-{auth}.log")
            if i == 0:
                seeding = cp.headers or {
                    "Authorization": f"Bearer {mint_admin({**env, 'MODELPLANE_HOME': tmp})}"
                }
            lua.write_text(LUA % (cp.headers.get("Authorization", ""), args.models - 1))
            try:
                if i == 0:
                    t0 = time.perf_counter()
                    rate = seed(cp.url, args.models, args.versions, seeding)
                    print(
                        f"seeded {args.models} models x {args.versions} versions in "
                        f"{time.perf_counter() - t0:.1f}s ({n} server workers)"
                    )
                    print(
                        f"sequential version creation (manifest + finalize): {rate:,.0f} "
                        f"versions/s (target >= 200)"
                    )
                    print(
                        f"GET /api/v1/models/{{name}}/versions/@production, wrk -t1, "
                        f"{args.duration}s each"
                    )
                    print(
                        f"{'server':>14} {'concurrency':>11} {'req/s':>9} {'p50 ms':>8} "
                        f"{'p99 ms':>8} {'non-2xx':>8}"
                    )
                label = f"{n} workers, auth {'on' if auth else 'off'}"
                rates[(n, auth)] = measure_reads(cp.url, lua, args.duration, label)
            finally:
                cp.stop()
        print("target at concurrency 64: >= 2,000 req/s with p99 < 100 ms")
        for n in workers:
            if (n, True) in rates and (n, False) in rates:
                on, off = rates[(n, True)], rates[(n, False)]
                ratios = ", ".join(f"c{c}: {on[c] / off[c]:.2f}x" for c in on)
                print(f"{n} workers: req/s with auth on / off: {ratios}")


if __name__ == "__main__":
    main()
