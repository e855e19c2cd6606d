"""`modelplane stack` as a multi-host deployment: two deployer workers on hosts of their own.

The real command runs as a child process (what `make stack` runs): the local Postgres on a
throwaway database, SeaweedFS, two control planes behind the stack's balancer, and two
workers, each in a network namespace with its own address (`netns`) or, where namespaces
are not permitted, on loopback addresses of their own (`loopback`). A deployment's serving
process listens on and advertises its worker's address, the stable URL reaches it through
either control plane, and after its worker is killed with -9 the replica moves to the other
host once the lease (3 s here) lapses. Ctrl-C then stops every process by PID and removes
the namespaces. A second run on the same home and database finds what the first stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bench.harness import (
    REPO,
    SIGNATURE,
    auth,
    push_version,
    torchscript_bytes,
    wait_for,
)
from bench.pg import ADMIN_DSN, drop_database
from devstack import netns
from tests.e2e.conftest import require_postgres

pytestmark = pytest.mark.timeout(300)
LEASE_TTL_S = 3.0
X = [1.0, 2.0, 3.0, 4.0]


class RunningStack:
    def __init__(self, process: subprocess.Popen[bytes], home: Path, output: Path) -> None:
        self.process, self.home, self.output = process, home, output
        self.info: dict[str, Any] = {}

    def logs(self) -> str:
        parts = [f"--- modelplane stack ---\n{self.output.read_text(errors='replace')[-3000:]}"]
        for log in sorted((self.home / "logs").glob("*.log")):
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def token(self) -> str:
        """The admin key the stack minted (auth is on, as in production)."""
        return str(json.loads(Path(self.info["credentials"]).read_text())["token"])

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.url}/api/v1{path}"
        return httpx.request(method, url, headers=auth(self.token), timeout=10, **kwargs)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie our test process has not reaped is gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def as_from_a_terminal() -> None:
    """SIGINT as a terminal leaves it: a test run started in the background (`make test &`)
    inherits it ignored, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def modelplane_stack(home: Path, database: str, *flags: str) -> Iterator[RunningStack]:
    """`modelplane stack ...` until the block ends, then Ctrl-C; checks that it exits 0 and
    leaves no process, namespace or veth behind."""
    output = home.with_name(f"{home.name}.out")
    argv = [
        sys.executable, "-m", "cli", "stack", "--home", str(home), "--port", "0",
        "--gateway-port", "0",
        "--database", database, "--postgres", ADMIN_DSN.rsplit("/", 1)[0], *flags,
    ]  # fmt: skip
    with output.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=as_from_a_terminal
        )
    running = RunningStack(process, home, output)
    try:

        def started() -> dict[str, Any] | None:
            assert process.poll() is None, running.logs()
            state = home / "stack.json"
            return json.loads(state.read_text()) if state.exists() else None

        running.info = wait_for("the stack", started, 150, running.logs)
        yield running
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            code = process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
        # Namespaces the stack made, removed by name if it failed to (then the test fails).
        leftovers = [w["namespace"] for w in running.info.get("workers", []) if w["namespace"]]
        leftovers = [n for n in leftovers if netns.exists(n)]
        for name in leftovers:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
    assert code == 0, running.logs()
    assert not leftovers, f"the stack left namespaces behind: {leftovers}"
    for worker in running.info["workers"]:
        assert worker["veth"] is None or not netns.link_exists(worker["veth"])
    survivors = [pid for pid in running.info["pids"] if alive(pid)]
    assert not survivors, f"still running after Ctrl-C: {survivors}\n{running.logs()}"
    assert not (home / "stack.json").exists(), "stack.json describes a stopped stack"


@pytest.fixture(params=["netns", "loopback"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    if request.param == "netns" and (why := netns.netns_unavailable()) is not None:
        pytest.skip(f"{why}; the same scenario runs in the loopback variant")
    require_postgres()
    database = f"mp_stack_{uuid.uuid4().hex[:12]}"
    mode = "on" if request.param == "netns" else "off"
    try:
        with modelplane_stack(
            tmp_path / "stack", database, "--netns", mode, "--lease-ttl-s", str(LEASE_TTL_S)
        ) as running:
            yield running
    finally:
        drop_database(database)


def infer(url: str, model: str, token: str) -> list[float]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    answer = httpx.post(
        f"{url}/v2/models/{model}/infer", json=body, headers=auth(token), timeout=10
    )
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def ready_endpoints(stack: RunningStack, name: str) -> list[dict[str, Any]]:
    answer = stack.api("GET", f"/deployments/{name}/endpoints")
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["items"] if e["status"] == "ready"]


def serving_pids(stack: RunningStack, worker: str) -> list[int]:
    log = (stack.home / "logs" / f"worker-{worker}.log").read_text(errors="replace")
    return [int(pid) for pid in re.findall(r"\(pid (\d+), port \d+,", log)]


def test_replicas_serve_from_their_hosts_and_move_when_a_host_dies(
    stack: RunningStack, tmp_path: Path
) -> None:
    workers = {w["name"]: w for w in stack.info["workers"]}
    addresses = sorted(w["address"] for w in workers.values())
    if stack.info["mode"] == "netns":
        assert all(a.startswith("10.77.") for a in addresses), addresses
        assert all(netns.exists(w["namespace"]) for w in workers.values())
    else:
        assert addresses == ["127.0.0.2", "127.0.0.3"]
    assert len(stack.info["control_planes"]) == 2
    assert len(stack.info["gateways"]) == 2
    ids = {w["id"]: w["name"] for w in stack.api("GET", "/workers").json()["items"] if w["live"]}
    assert sorted(ids.values()) == sorted(workers)

    model = torchscript_bytes(1.0, tmp_path / "hosts.pt")
    files = {"model.pt": model}
    push_version(stack.url, "hosts", files, "torchscript", stack.token, signature=SIGNATURE)
    body = {"name": "hosts", "model": "hosts", "version": 1, "replicas": 1}
    assert stack.api("POST", "/deployments", json=body).status_code == 201

    [first] = wait_for("a ready endpoint", lambda: ready_endpoints(stack, "hosts"), 90, stack.logs)
    owner = next(n for n, w in workers.items() if urlsplit(first["url"]).hostname == w["address"])
    other = next(n for n in workers if n != owner)
    # The stable URL, through the balancer and through each control plane, and through the
    # gateway processes' balancer and each gateway, reaches the host.
    bases = [
        stack.url, *(cp["url"] for cp in stack.info["control_planes"]),
        stack.info["gateway_url"], *(gw["url"] for gw in stack.info["gateways"]),
    ]  # fmt: skip
    for base in bases:
        assert infer(f"{base}/serve/hosts", "hosts", stack.token) == [2.0, 3.0, 4.0, 5.0]

    serving_pid = serving_pids(stack, owner)[-1]  # the live one (a loaded host may restart one)
    os.kill(workers[owner]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for("its serving process to follow it", lambda: not alive(serving_pid), 20, stack.logs)

    def claimed() -> bool:
        answer = stack.api("GET", "/deployments/hosts").json()
        running = [r for r in answer["observed"]["replicas"] if r["desired"] == "run"]
        return any(ids.get(r["worker"] or "") == other for r in running)

    wait_for(f"the replica claimed by {other}", claimed, LEASE_TTL_S + 20, stack.logs)
    claim_s = time.monotonic() - killed

    def moved() -> list[dict[str, Any]]:
        here = workers[other]["address"]
        return [e for e in ready_endpoints(stack, "hosts") if urlsplit(e["url"]).hostname == here]

    [second] = wait_for(f"the endpoint on {other}", moved, 90, stack.logs)
    ready_s = time.monotonic() - killed
    print(f"{stack.info['mode']}: kill -9 of {owner} -> claimed by {other} in {claim_s:.1f}s, "
          f"serving there in {ready_s:.1f}s (lease TTL {LEASE_TTL_S}s)")  # fmt: skip
    assert second["url"] != first["url"]
    assert infer(f"{stack.url}/serve/hosts", "hosts", stack.token) == [2.0, 3.0, 4.0, 5.0]

    def through_gateways() -> bool:  # they have the moved endpoint within a feed's delay
        try:
            return infer(f"{stack.info['gateway_url']}/serve/hosts", "hosts", stack.token) == [
                2.0, 3.0, 4.0, 5.0,
            ]  # fmt: skip
        except AssertionError:
            return False

    wait_for("the moved endpoint through the gateways", through_gateways, 10, stack.logs)
    assert stack.api("DELETE", "/deployments/hosts").status_code in (202, 204)


def test_stack_keeps_its_database_artifacts_and_keys_between_runs(tmp_path: Path) -> None:
    """A second `modelplane stack` on the same home and database finds the first one's
    versions, their bytes (SeaweedFS restarted on new ports, its bucket kept) and its keys;
    a third runs without gateways."""
    require_postgres()
    database = f"mp_stack_{uuid.uuid4().hex[:12]}"
    home = tmp_path / "stack"
    flags = ("--netns", "off", "--workers", "1", "--control-planes", "1", "--gateways", "1")
    data = b"kept between runs" * 100
    try:
        with modelplane_stack(home, database, *flags) as first:
            push_version(first.url, "kept", {"model.pt": data}, "torchscript", first.token)
            token = first.token
            gateway_key = json.loads((home / "gateway-credentials.json").read_text())["token"]
        with modelplane_stack(home, database, *flags) as second:
            assert second.token == token  # the saved admin key still works: not minted again
            again = json.loads((home / "gateway-credentials.json").read_text())["token"]
            assert again == gateway_key  # nor the gateways' key

            # the store restarted on new ports: a 503 (Retry-After) until it answers reads
            def read() -> httpx.Response | None:
                answer = second.api("GET", "/models/kept/versions/1/files/model.pt")
                return None if answer.status_code == 503 else answer

            answer = wait_for("the kept file", read, 30, second.logs)
            assert answer.status_code == 200 and answer.content == data
        no_gateways = (*flags[:-1], "0")  # --gateways 0: none, and no port taken for them
        with modelplane_stack(home, database, *no_gateways) as third:
            assert third.info["gateways"] == [] and third.info["gateway_url"] is None
            assert third.api("GET", "/models/kept/versions/1").status_code == 200
    finally:
        drop_database(database)
