"""Soak: everything at once, with random kills, then a consistency audit.

    .venv/bin/python -m bench.soak [--duration 600] [--kill-every 20] [--seed 1]

Starts SeaweedFS, a control plane on a throwaway Postgres database, and two deployer
workers on loopback; deploys a model (2 replicas) and then, for ``--duration`` seconds, mixes
  - uploads: new versions (proxied PUTs of 4 KiB-3 MiB files, some shared between versions,
    and servable TorchScript models), finalized;
  - alias moves (a third with ``If-Match``, where a 412 is the expected answer to a race),
    alias rollbacks;
  - deployment updates to a random ready version, deployment rollbacks;
  - inference through the stable URL at a steady rate;
  - every ``--kill-every`` seconds a kill -9 of a random victim: a serving process, a worker
    (restarted a few seconds later), or the control plane (restarted on the same port).
It prints the operations done, the failures by kind (expected ones, such as calls while the
control plane is down, are counted, not hidden), and an audit: version numbers without gaps,
every ready version's bytes re-hashed through the API, every blob in the store re-hashed
against its key, every alias history a chain that ends where the alias points and matches
the audit log, every deployment settled and answering. Exit status 1 if the audit fails or a
call got a 500.

``tests/faults/test_soak.py`` runs a short one (``run_soak(60)``) in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import Load, alias_history, events, manifest, s3_env, sha
from bench.harness import (
    SIGNATURE,
    Process,
    Worker,
    base_env,
    free_port,
    torchscript_bytes,
    wait_for,
)
from bench.pg import throwaway_database
from devstack.seaweed import SeaweedServer

API = "/api/v1"
SERVED = "soak-serve"  # the deployed model (its versions are TorchScript y = x + c)
PLAIN = ("soak-a", "soak-b")  # models of plain files
ALIASES = ("production", "staging")
PORTS = {"w1": "45000-45499", "w2": "45500-45999"}


class ControlPlane(Process):
    """``python -m cli server --migrate`` on a fixed port, so a restart keeps its URL."""

    def __init__(self, log_dir: Path, env: dict[str, str], port: int) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        full = {**base_env(), **env, "MODELPLANE_HOST": "127.0.0.1"}
        full["MODELPLANE_PORT"] = str(port)
        super().__init__(["-m", "cli", "server", "--migrate"], log_dir / "cp.log", full)

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log()
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

        wait_for("the control plane", ready, timeout, self.log)


@dataclass
class Report:
    ops: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 500s our calls got
    logged_errors: list[str] = field(default_factory=list)  # 500s anyone got (the cp log)
    audit: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    calls: int = 0
    failed_calls: int = 0
    p99_ms: float = 0.0

    @property
    def consistent(self) -> bool:
        return not self.problems

    def print(self, duration: float) -> None:
        print(f"\nsoak: {duration:.0f}s")
        print("  operations:", dict(sorted(self.ops.items())))
        print("  failures by kind:", dict(sorted(self.failures.items())) or "none")
        print("  kills:", dict(sorted(self.kills.items())) or "none")
        print(f"  inference through the stable URL: {self.calls} answered, "
              f"{self.failed_calls} failed, p99 {self.p99_ms:.1f} ms")  # fmt: skip
        print("  500s to the soak's calls:", len(self.server_errors), self.server_errors[:3])
        print("  unhandled errors in the control-plane log (any caller, workers included):",
              len(self.logged_errors), self.logged_errors[:3])  # fmt: skip
        print("  audit:", self.audit)
        print("  consistency:", "OK" if self.consistent else f"FAILED: {self.problems[:10]}")


class Soak:
    def __init__(self, root: Path, seaweed: SeaweedServer, database_url: str, seed: int) -> None:
        self.root, self.seaweed, self.rng = root, seaweed, random.Random(seed)
        self.bucket = f"soak-{uuid.uuid4().hex[:10]}"
        seaweed.client().create_bucket(Bucket=self.bucket)
        self.env = {
            "MODELPLANE_DATABASE_URL": database_url,
            "MODELPLANE_STORAGE_URL": f"s3://{self.bucket}/mp",
            "MODELPLANE_AUTH_ENABLED": "false",
            "MODELPLANE_DB_POOL_SIZE": "8",
            "MODELPLANE_LEASE_TTL_S": "4",
            "MODELPLANE_HEARTBEAT_S": "1",
            "MODELPLANE_ROUTE_FEED_POLL_S": "0.2",
            **{f"MODELPLANE_{k.upper()}": v for k, v in s3_env(seaweed.endpoint_url).items()},
        }
        self.port = free_port()
        self.cp = ControlPlane(root, self.env, self.port)
        self.url = self.cp.url
        self.workers: dict[str, Worker] = {}
        self.report = Report()
        self.ready: dict[str, list[int]] = {m: [] for m in (SERVED, *PLAIN)}
        self.lock = threading.Lock()  # the control plane restarts under the kill thread
        self.halt = threading.Event()

    def logs(self) -> str:
        return "\n".join([self.cp.log(), *(w.log() for w in self.workers.values())])

    def start_worker(self, name: str) -> None:
        self.workers[name] = Worker(
            self.root, self.url, name, None, cpu_slots="3", drain_timeout_s="10",
            port_range=PORTS[name], serving_heartbeat_s="1", max_restarts="3",
        )  # fmt: skip

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.cp.stop()

    # -- operations --------------------------------------------------------------------------

    def call(self, kind: str, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One API call, scored: ``kind`` ok, or a failure ``kind:status`` / ``kind:Error``."""
        try:
            answer = httpx.request(method, f"{self.url}{API}{path}", timeout=30, **kwargs)
        except httpx.HTTPError as exc:
            self.report.failures[f"{kind}:{type(exc).__name__}"] += 1
            return None
        if answer.status_code >= 400:
            self.report.failures[f"{kind}:{answer.status_code}"] += 1
            if answer.status_code == 500:
                self.report.server_errors.append(f"{method} {path}: {answer.text[:300]}")
            return None
        self.report.ops[kind] += 1
        return answer

    def upload(self) -> None:
        model = self.rng.choice((SERVED, *PLAIN))
        if model == SERVED:
            c = float(self.rng.randint(1, 9))
            path = self.root / f"m-{uuid.uuid4().hex}.pt"
            files = {"model.pt": torchscript_bytes(c, path, tag=uuid.uuid4().hex)}
            extra: dict[str, Any] = {"format": "torchscript", "signature": SIGNATURE}
        else:
            shared = b"shared config " * 300  # the same blob in many versions: deduplicated
            size = self.rng.choice((4096, 200_000, 3 * 2**20))
            files = {"config.json": shared, "weights.bin": os.urandom(size)}
            extra = {}  # plain files, no format: they are never deployed
        body = {"files": manifest(files), **extra}
        created = self.call("version.create", "POST", f"/models/{model}/versions", json=body)
        if created is None:
            return
        version = created.json()
        for f in version["files"]:
            if not f["present"]:
                url = f["upload"]["url"].removeprefix(API)
                if self.call("file.upload", "PUT", url, content=files[f["path"]]) is None:
                    return
        number = version["version"]
        done = self.call("version.finalize", "POST", f"/models/{model}/versions/{number}/finalize")
        if done is not None and done.json()["status"] == "ready":
            with self.lock:
                self.ready[model].append(number)

    def move_alias(self) -> None:
        model = self.rng.choice((SERVED, *PLAIN))
        if not self.ready[model]:
            return
        alias, version = self.rng.choice(ALIASES), self.rng.choice(self.ready[model])
        path = f"/models/{model}/aliases/{alias}"
        headers = {}
        if self.rng.random() < 0.33:
            current = self.call("alias.get", "GET", path)
            if current is None:
                return
            headers["If-Match"] = current.headers["etag"]
        self.call("alias.move", "PUT", path, json={"version": version}, headers=headers)

    def rollback_alias(self) -> None:
        model, alias = self.rng.choice((SERVED, *PLAIN)), self.rng.choice(ALIASES)
        self.call("alias.rollback", "POST", f"/models/{model}/aliases/{alias}/rollback")

    def update_deployment(self) -> None:
        if self.ready[SERVED]:
            version = self.rng.choice(self.ready[SERVED])
            self.call("deployment.update", "PATCH", f"/deployments/{SERVED}",
                      json={"version": version})  # fmt: skip

    def rollback_deployment(self) -> None:
        self.call("deployment.rollback", "POST", f"/deployments/{SERVED}/rollback", json={})

    def operations(self) -> None:
        choices: list[tuple[Callable[[], None], int]] = [
            (self.upload, 5),
            (self.move_alias, 5),
            (self.rollback_alias, 1),
            (self.update_deployment, 1),
            (self.rollback_deployment, 1),
        ]
        actions = [a for a, _ in choices]
        weights = [w for _, w in choices]
        while not self.halt.is_set():
            self.rng.choices(actions, weights)[0]()
            time.sleep(0.1)

    # -- kills -------------------------------------------------------------------------------

    def serving_pids(self) -> list[int]:
        pids = []
        for worker in self.workers.values():
            text = worker.log_path.read_text(errors="replace")
            latest = {port: int(pid) for pid, port in re.findall(r"\(pid (\d+), port (\d+),", text)}
            pids += [p for p in latest.values() if _alive(p)]
        return pids

    def kill_one(self) -> None:
        victim = self.rng.choices(["serving", "worker", "control-plane"], [5, 2, 1])[0]
        if victim == "serving":
            if not (pids := self.serving_pids()):
                return
            os.kill(self.rng.choice(pids), signal.SIGKILL)
        elif victim == "worker":
            name = self.rng.choice(sorted(self.workers))
            self.workers[name].kill9()
            time.sleep(self.rng.uniform(1, 6))
            self.start_worker(name)
        else:
            self.cp.kill9()
            time.sleep(self.rng.uniform(0.5, 3))
            self.cp = ControlPlane(self.root, self.env, self.port)
        self.report.kills[victim] += 1

    def kills(self, every: float) -> None:
        while not self.halt.wait(self.rng.uniform(0.5 * every, 1.5 * every)):
            self.kill_one()

    # -- the run and the audit ---------------------------------------------------------------

    def setup(self) -> None:
        self.cp.wait_ready()
        for name in PORTS:
            self.start_worker(name)
        for model in (SERVED, *PLAIN):
            self.call("model.create", "POST", "/models", json={"name": model})
        while not self.ready[SERVED]:
            self.upload()
        body = {"name": SERVED, "model": SERVED, "version": self.ready[SERVED][0], "replicas": 2}
        self.call("deployment.create", "POST", "/deployments", json=body)
        wait_for("the first deployment", self.answering, 120, self.logs)

    def answering(self) -> bool:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
        url = f"{self.url}/serve/{SERVED}/v2/models/{SERVED}/infer"
        return httpx.post(url, json=body, timeout=10).status_code == 200

    def run(self, duration: float, kill_every: float) -> Report:
        self.setup()
        load = Load(f"{self.url}/serve/{SERVED}", SERVED, rate=30, concurrency=3)
        threads = [
            threading.Thread(target=self.operations, daemon=True),
            threading.Thread(target=self.kills, args=(kill_every,), daemon=True),
        ]
        started = time.monotonic()
        load.start()
        for thread in threads:
            thread.start()
        self.halt.wait(duration)
        self.halt.set()
        for thread in threads:
            thread.join(120)
        load.stop()
        self.report.calls, self.report.failed_calls = sum(load.seen.values()), len(load.failures)
        self.report.p99_ms = load.window(started, time.monotonic())[1]
        self.report.server_errors += [f for f in load.failures if f.startswith("500")]
        for failure in load.failures:
            self.report.failures[f"infer:{failure.split(':')[0][:40]}"] += 1
        self.audit()
        log = self.cp.log_path.read_text(errors="replace")  # every incarnation appends to it
        self.report.logged_errors = re.findall(r"unhandled error on [^\n]*", log)
        return self.report

    def audit(self) -> None:
        """Runs on a quiet platform (no more kills), against what the database and store hold."""
        self.cp.wait_ready()
        http = httpx.Client(base_url=self.url, timeout=60)
        problems, audit = self.report.problems, self.report.audit
        for model in (SERVED, *PLAIN):
            versions = _all_items(http, f"{API}/models/{model}/versions")
            numbers = sorted(v["version"] for v in versions)
            if numbers != list(range(1, len(numbers) + 1)):
                problems.append(f"{model}: version numbers {numbers} have gaps or duplicates")
            states = {v["version"]: v["status"] for v in versions}
            for number in self.ready[model]:
                if states.get(number) != "ready":
                    problems.append(
                        f"{model} v{number} acknowledged ready, now {states.get(number)}"
                    )
            for listed in (v for v in versions if v["status"] == "ready"):
                v = http.get(f"{API}/models/{model}/versions/{listed['version']}").json()
                for f in v["files"]:
                    url = f"{API}/models/{model}/versions/{v['version']}/files/{f['path']}"
                    if sha(http.get(url).content) != f["sha256"]:
                        problems.append(f"{model} v{v['version']} {f['path']}: bytes do not match")
                    audit["files re-hashed"] = audit.get("files re-hashed", 0) + 1
            for alias in ALIASES:
                self._audit_alias(http, model, alias)
        self._audit_blobs()
        self._audit_deployment(http)

    def _audit_alias(self, http: httpx.Client, model: str, alias: str) -> None:
        problems, audit = self.report.problems, self.report.audit
        history = alias_history(http, model, alias)
        if not history:
            return
        for before, after in zip(history, history[1:], strict=False):
            if after["from_version"] != before["to_version"]:
                problems.append(f"{model}@{alias}: history breaks at {before} -> {after}")
        current = http.get(f"{API}/models/{model}/aliases/{alias}")
        now = current.json()["version"] if current.status_code == 200 else None
        if history[-1]["to_version"] != now:
            problems.append(f"{model}@{alias}: points at {now}, history ends at {history[-1]}")
        logged = [
            e for action in ("alias.moved", "alias.rolled_back", "alias.deleted")
            for e in events(http, model, action) if e["target"] == f"alias:{alias}"
        ]  # fmt: skip
        logged.sort(key=lambda e: e["id"])
        if [(e["before"], e["after"]) for e in logged] != [
            (h["from_version"], h["to_version"]) for h in history
        ]:
            problems.append(f"{model}@{alias}: history and audit log disagree")
        audit["alias moves checked"] = audit.get("alias moves checked", 0) + len(history)

    def _audit_blobs(self) -> None:
        client = self.seaweed.client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix="mp/blobs/sha256/"):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                if sha(body) != item["Key"].rsplit("/", 1)[1]:
                    self.report.problems.append(f"blob {item['Key']} does not hash to its key")
                self.report.audit["blobs re-hashed"] = (
                    self.report.audit.get("blobs re-hashed", 0) + 1
                )

    def _audit_deployment(self, http: httpx.Client) -> None:
        revisions = _all_items(http, f"{API}/deployments/{SERVED}/revisions")
        numbers = sorted(r["revision"] for r in revisions)
        if numbers != list(range(1, len(numbers) + 1)):
            self.report.problems.append(f"revision numbers {numbers} have gaps")
        self.report.audit["revisions"] = len(numbers)

        def settled() -> bool:
            body = http.get(f"{API}/deployments/{SERVED}").json()
            if body["status"] == "failed":  # a replica killed into a crash loop: as an
                self.report.audit["failed at the end, rolled back"] = 1  # operator would
                http.post(f"{API}/deployments/{SERVED}/rollback", json={})
                return False
            return body["status"] == "available" and self.answering()

        try:
            wait_for("the deployment to settle after the soak", settled, 120, self.logs)
        except AssertionError as exc:
            self.report.problems.append(str(exc)[:2000])


def _all_items(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = http.get(path, params=params).json()
        items += page["items"]
        if not (cursor := page["next_cursor"]):
            return items


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def run_soak(duration: float, *, kill_every: float = 20, seed: int = 1) -> Report:
    """A whole soak on its own SeaweedFS and throwaway database; the report, printed."""
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    with SeaweedServer(root / "seaweed") as seaweed, throwaway_database("mp_soak") as url:
        soak = Soak(root, seaweed, url, seed)
        try:
            report = soak.run(duration, kill_every)
        finally:
            soak.stop()
    report.print(duration)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds (default 600)")
    parser.add_argument("--kill-every", type=float, default=20, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    report = run_soak(options.duration, kill_every=options.kill_every, seed=options.seed)
    clean = not report.server_errors and not report.logged_errors
    raise SystemExit(0 if report.consistent and clean else 1)


if __name__ == "__main__":
    main()
