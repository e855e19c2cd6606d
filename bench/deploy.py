"""Deploy benchmark: `POST /deployments` → first successful infer through the stable URL, for a
~400 MB TorchScript model, next to a plain S3 download + `torch.jit.load` of the same file.

    .venv/bin/python -m bench.deploy [--size-mb 400] [--rounds 3] [--postgres]

Real processes on loopback: SeaweedFS, a control plane (`modelplane server`, SQLite or a
throwaway Postgres database, artifacts on s3://), one deployer worker (`python -m deployer`,
its defaults: warm spare on, claim heartbeats every 0.5 s). The model (a stack of
Linear(2048, 2048) + ReLU, scripted) is made once and cached under bench/out/.

Each round, in this order:
  baseline  boto3 `download_file` of the blob from SeaweedFS + `torch.jit.load` + one forward,
            in this (already torch-importing) process: what one process would do by hand;
  cold      a worker with an empty cache: POST /deployments, then calls through
            `/serve/{name}` every 10 ms until one answers 200;
  cache-hit the deployment deleted (its process gone), a new one of the same version on
            the same worker (blob cached): POST → first 200 again.
Phases come from the deployment's events (claimed, pulling, loading, warming, ready).
Medians over the rounds, side by side, with the ratios; the machine's other tenants make
absolute numbers drift, so compare within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn

from bench._common import ROOT, ControlPlane, free_port, throwaway_postgres
from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SeaweedServer

WIDTH = 2048
OUT = ROOT / "bench" / "out"
MODEL = "big"
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, WIDTH]}],
}
INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": [0.5] * WIDTH}]}


class Stack(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *(m for _ in range(layers) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU()))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def model_file(size_mb: int) -> tuple[Path, str]:
    """The TorchScript file (made once, cached under bench/out/) and its sha256."""
    layers = max(1, round(size_mb * 1e6 / (WIDTH * (WIDTH + 1) * 4)))
    path = OUT / f"deploy-linear-{layers}x{WIDTH}.pt"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        print(f"making {path.name} ({layers} layers) ...", flush=True)
        torch.manual_seed(0)
        temp = path.with_suffix(".tmp")
        torch.jit.save(torch.jit.script(Stack(layers).eval()), temp)
        temp.rename(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return path, digest.hexdigest()


def push(cp: str, path: Path, sha: str) -> None:
    """The model's version 1, its bytes PUT through the control plane."""
    with httpx.Client(base_url=f"{cp}/api/v1", timeout=600) as http:
        http.post("/models", json={"name": MODEL}).raise_for_status()
        manifest = [{"path": "model.pt", "size": path.stat().st_size, "sha256": sha}]
        body = {"files": manifest, "format": "torchscript", "signature": SIGNATURE}
        http.post(f"/models/{MODEL}/versions", json=body).raise_for_status()

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while block := f.read(8 << 20):
                    yield block

        http.put(f"/models/{MODEL}/versions/1/files/model.pt", content=chunks()).raise_for_status()
        http.post(f"/models/{MODEL}/versions/1/finalize").raise_for_status()


class Worker:
    """`python -m deployer` with its own cache directory, stopped by PID."""

    def __init__(self, cp: str, cache: Path, log: Path) -> None:
        port = free_port() // 2 * 2
        args = [
            sys.executable, "-m", "deployer", "--control-plane", cp, "--name", "bench",
            "--cache-dir", str(cache), "--cpu-slots", "1",
            "--port-range", f"{port}-{port + 200}",
        ]  # fmt: skip
        self.log = log
        self._sink = log.open("ab")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=os.environ.copy(), stdout=self._sink, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._sink.close()


def wait(what: str, check: Any, timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if out := check():
                return out
        except httpx.HTTPError:
            pass
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def settle(seconds: float) -> None:
    """Let the worker's warm spare finish importing torch (what a worker idle for a while
    has), so a round measures deploying, not the previous round's leftovers."""
    time.sleep(seconds)


def baseline(s3: Any, bucket: str, sha: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        target = Path(tmp) / "model.pt"
        started = time.perf_counter()
        s3.download_file(bucket, f"mp/blobs/sha256/{sha}", str(target))
        downloaded = time.perf_counter()
        module = torch.jit.load(str(target), map_location="cpu")
        loaded = time.perf_counter()
        with torch.inference_mode():
            module(torch.full((1, WIDTH), 0.5))
        called = time.perf_counter()
    return {
        "download": downloaded - started,
        "load": loaded - downloaded,
        "forward": called - loaded,
        "download+load": loaded - started,
    }


def deploy(cp: str, name: str) -> dict[str, float]:
    """POST → first 200 through the stable URL; the phases from the deployment's events."""
    http = httpx.Client(timeout=30)
    try:
        wall0, started = time.time(), time.perf_counter()
        answer = http.post(
            f"{cp}/api/v1/deployments",
            json={"name": name, "model": MODEL, "version": 1, "device": "cpu"},
        )
        answer.raise_for_status()
        url = f"{cp}/serve/{name}/v2/models/{MODEL}/infer"

        def answered() -> bool:
            return http.post(url, json=INFER).status_code == 200

        wait(f"{name} answering", answered, 600, step=0.01)
        took = time.perf_counter() - started
        events = http.get(f"{cp}/api/v1/events", params={"deployment": name, "limit": 1000}).json()[
            "items"
        ]
    finally:
        http.close()
    out = {"total": took}
    for event in events:
        at = datetime.fromisoformat(event["time"]).timestamp() - wall0
        if event["action"] == "replica.claimed":
            out.setdefault("claimed", at)
        elif event["action"] == "replica.state_changed":
            out.setdefault(event["after"]["state"], at)
    return out


def delete(cp: str, name: str, worker: Worker) -> None:
    stops = _stops(worker.log)
    httpx.delete(f"{cp}/api/v1/deployments/{name}", timeout=30)
    wait(
        f"{name} gone",
        lambda: httpx.get(f"{cp}/api/v1/deployments/{name}", timeout=10).status_code == 404,
        120,
    )
    # its serving process has exited once the worker logged it
    wait(f"{name}'s process stopped", lambda: _stops(worker.log) > stops, 60)


def _stops(log: Path) -> int:
    return log.read_text(errors="replace").count(": stopped (")


@contextmanager
def database(postgres: bool, tmp: Path) -> Iterator[str]:
    if postgres:
        with throwaway_postgres() as url:
            yield url
    else:
        yield f"sqlite+aiosqlite:///{tmp / 'registry.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=8.0)
    parser.add_argument("--postgres", action="store_true", help="a throwaway Postgres database")
    args = parser.parse_args()
    path, sha = model_file(args.size_mb)
    size = path.stat().st_size
    print(f"model: {path.name}, {size / 1e6:.0f} MB, sha256 {sha[:12]}…", flush=True)
    torch.set_num_threads(1)  # a serving process on a CPU slot uses one as well
    tmp = Path(tempfile.mkdtemp(prefix="mp-bench-deploy-", dir=os.environ.get("BENCH_TMP")))
    rows: dict[str, list[dict[str, float]]] = {"baseline": [], "cold": [], "cache-hit": []}
    try:
        with SeaweedServer() as seaweed, database(args.postgres, tmp) as db_url:
            s3 = seaweed.client()
            bucket = "bench-deploy"
            s3.create_bucket(Bucket=bucket)
            env = {
                "MODELPLANE_DATABASE_URL": db_url,
                "MODELPLANE_STORAGE_URL": f"s3://{bucket}/mp",
                "MODELPLANE_S3_ENDPOINT_URL": seaweed.endpoint_url,
                "MODELPLANE_S3_REGION": REGION,
                "MODELPLANE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "MODELPLANE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "MODELPLANE_AUTH_ENABLED": "false",
            }
            cp = ControlPlane(env, log=tmp / "cp.log")
            try:
                push(cp.url, path, sha)
                print("pushed; rounds:", flush=True)
                for i in range(args.rounds):
                    rows["baseline"].append(baseline(s3, bucket, sha))
                    worker = Worker(cp.url, tmp / f"cache-{i}", tmp / f"worker-{i}.log")
                    try:
                        settle(args.settle_s)
                        rows["cold"].append(deploy(cp.url, f"cold-{i}"))
                        delete(cp.url, f"cold-{i}", worker)
                        settle(args.settle_s)
                        rows["cache-hit"].append(deploy(cp.url, f"warm-{i}"))
                        delete(cp.url, f"warm-{i}", worker)
                    finally:
                        worker.stop()
                        shutil.rmtree(tmp / f"cache-{i}", ignore_errors=True)
                    b, c, w = rows["baseline"][-1], rows["cold"][-1], rows["cache-hit"][-1]
                    print(
                        f"  round {i + 1}: baseline {b['download+load']:.2f}s, "
                        f"cold {c['total']:.2f}s, cache-hit {w['total']:.2f}s",
                        flush=True,
                    )
            finally:
                cp.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, size)


def median(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def report(rows: dict[str, list[dict[str, float]]], size: int) -> None:
    b = {k: median(rows["baseline"], k) for k in ("download", "load", "forward", "download+load")}
    base = b["download+load"] or float("nan")
    print(f"\n{len(rows['cold'])} rounds, medians; {size / 1e6:.0f} MB TorchScript, CPU")
    print(f"{'':34}{'seconds':>9}{'vs baseline':>13}")
    print(f"{'baseline: boto3 download':34}{b['download']:>9.2f}")
    print(f"{'          + torch.jit.load':34}{b['load']:>9.2f}")
    print(f"{'          = baseline':34}{base:>9.2f}{1.0:>12.2f}x")
    print(f"{'          (+ first forward)':34}{b['forward']:>9.2f}")
    for kind in ("cold", "cache-hit"):
        total = median(rows[kind], "total") or float("nan")
        label = "deploy, empty cache" if kind == "cold" else "redeploy, cache hit"
        print(f"{label + ': POST -> 1st infer':34}{total:>9.2f}{total / base:>12.2f}x")
        phases = [
            (p, median(rows[kind], p))
            for p in ("claimed", "pulling", "loading", "warming", "ready")
        ]
        shown = ", ".join(f"{p} +{v:.2f}" for p, v in phases if v is not None)
        print(f"{'':4}phases (s after POST): {shown}")
    cold = median(rows["cold"], "total") or float("nan")
    warm = median(rows["cache-hit"], "total") or float("nan")
    print(f"\noverhead over baseline: {cold - base:+.2f}s (target <= 1 s)")
    print(f"cache-hit redeploy: {warm:.2f}s (target <= 1.5 s)")


if __name__ == "__main__":
    main()
