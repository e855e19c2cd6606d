"""The stable URL against calling the serving process directly, ratios in one run
(``bench/inference.py --stable-url``).

Per model (the MLP and the CNN of `bench.inference`), two embedded platforms as ``make up``
runs them (``modelplane up``: SQLite and files under a temporary ``MODELPLANE_HOME``, one
control-plane process, its deployer worker), one with auth on (the default) and one with
``MODELPLANE_AUTH_ENABLED=false``, the model deployed on each with the defaults; beside the
auth-on one ``python -m gateway`` with a key of scope ``gateway``. Then, for each body
(binary, JSON) and concurrency, every target is measured in turn, ``--repeat`` rounds, the
best round of each kept (the machine's other tenants only ever slow a run down):

- ``direct``: wrk straight at the serving process (the base of the wrk rows);
- ``embedded``: wrk at ``/serve/{d}`` of the auth-on control plane, with a ``read`` key;
- ``embedded-noauth``: the same on the auth-off platform (its own, identical serving process);
- ``gateway``: wrk at ``/serve/{d}`` of the gateway process, with the ``read`` key;
- ``haproxy``: the same at ``python -m gateway --engine haproxy`` (HAProxy answers the
  calls; its CPU is the gateway process's with all its descendants: HAProxy's master and
  workers);
- ``py-direct`` and ``sdk-direct`` (binary only): a Python load generator (`bench.pyload`,
  threads in this process) posting the ready-made body with httpx straight to the serving
  process (the base of the SDK row), and calling ``Client(direct=True).infer``.

Each row prints req/s, p50, p99, the ratio to its base, the p50 added, and the CPU time per
call of the forwarding process (control plane or gateway), of the serving process and (for
the Python rows) of this process, from ``/proc/<pid>/stat`` before and after the run.

    .venv/bin/python bench/inference.py --stable-url --duration 5 --repeat 2
    .venv/bin/python -m bench.stable_url --models mlp --targets direct embedded gateway

Every process is on loopback and stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.harness import Process, base_env, free_port, wait_for
from bench.inference import MODELS, Model, lua_script, request_files, run_wrk, save
from bench.procstat import cpu_seconds, listener_pid, tree_cpu_seconds
from bench.pyload import drive
from client import Client
from contract.http import NODELAY

TARGETS = (
    "direct", "embedded", "embedded-noauth", "gateway", "haproxy", "py-direct", "sdk-direct"
)  # fmt: skip
BASE = {"py-direct": "py-direct", "sdk-direct": "py-direct"}  # the others: "direct"
# the targets (auth on, as users run it)
KEPT_AT_32, ADDED_P50_AT_1_MS, CPU_SHARE, SDK_KEPT = 0.8, 0.5, 0.25, 0.95

Measure = Callable[[int, float], tuple[float, float, float, int, float | None]]


# -- the platforms ------------------------------------------------------------------------


@dataclass
class Platform:
    """One ``modelplane up`` with the model deployed on it."""

    url: str
    admin: dict[str, str]  # headers with the admin key (none when auth is off)
    reader: str | None  # a key of scope read, what callers of /serve use
    direct: str  # the serving process's base URL
    control_plane_pid: int
    serving_pid: int

    @property
    def caller(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.reader}"} if self.reader else {}


@contextmanager
def platform(root: Path, model: Model, path: Path, *, auth: bool) -> Iterator[Platform]:
    """``python -m cli up`` on a free port, the model pushed and deployed (defaults)."""
    home = root / f"up-{model.name}-{'auth' if auth else 'noauth'}"
    home.mkdir()
    port = free_port()
    env = {**base_env(), "MODELPLANE_AUTH_ENABLED": str(auth).lower()}
    env["MODELPLANE_SERVING_LOG_LEVEL"] = "error"
    args = ["-m", "cli", "up", "--home", str(home), "--port", str(port)]
    up = Process(args, home / "up.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("modelplane up", lambda: _answers(url, up), 120, up.log)
        token = orjson.loads((home / "credentials.json").read_bytes())["token"] if auth else None
        admin = {"Authorization": f"Bearer {token}"} if token else {}
        direct = _deploy(url, token, model, path).rstrip("/")
        yield Platform(
            url=url,
            admin=admin,
            reader=create_key(url, admin, "read") if auth else None,
            direct=direct,
            control_plane_pid=listener_pid(port),  # `up` serves in its own process
            serving_pid=listener_pid(int(direct.rsplit(":", 1)[1])),
        )
    finally:
        up.stop(60)


def _answers(url: str, up: Process) -> bool:
    assert up.process.poll() is None, up.log()
    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200


def _deploy(url: str, token: str | None, model: Model, path: Path) -> str:
    """Push and deploy with the SDK; the ready endpoint's URL."""
    shape = [-1, *model.shape[1:]]
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}]}
    with Client(url, token) as sdk:
        sdk.push(model.name, path, format="torch_export", signature=signature)
        sdk.deploy(model.name, version=1, device="cpu")
        sdk.wait_ready(model.name, timeout=300)
        return next(e.url for e in sdk.endpoints(model.name) if e.status == "ready")


def create_key(url: str, admin: dict[str, str], scope: str) -> str:
    body = {"name": f"bench-{scope}", "scopes": [scope]}
    answer = httpx.post(f"{url}/api/v1/keys", json=body, headers=admin, timeout=30)
    answer.raise_for_status()
    return str(answer.json()["token"])


@contextmanager
def gateway(
    root: Path, on: Platform, deployment: str, engine: str = "python"
) -> Iterator[tuple[str, int]]:
    """``python -m gateway --engine ENGINE`` following ``on`` with a key of scope
    ``gateway`` (in its environment: flags show in ps): its base URL and PID, once it routes
    ``deployment``."""
    port = free_port()
    env = {**base_env(), "MODELPLANE_GATEWAY_TOKEN": create_key(on.url, on.admin, "gateway")}
    args = ["-m", "gateway", "--registry-url", on.url, "--port", str(port), "--engine", engine]
    process = Process(args, root / f"gateway-{engine}-{deployment}.log", env)
    url = f"http://127.0.0.1:{port}"
    probe = f"{url}/serve/{deployment}/v2/health/ready"

    def routes() -> bool:
        assert process.process.poll() is None, process.log()
        return httpx.get(probe, headers=on.caller, timeout=2).status_code == 200

    try:
        wait_for("the gateway process to route calls", routes, 60, process.log)
        yield url, process.pid
    finally:
        process.stop(30)


# -- the targets --------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    forwarder_us: float | None  # CPU µs per call of the control plane or the gateway
    serving_us: float
    client_us: float | None  # the Python load generator's (this process's)


@dataclass
class Target:
    name: str
    serving_pid: int
    forwarder_pid: int | None
    measure: Measure  # (connections, seconds) -> req/s, p50, p99, errors, client CPU s
    forwarder_cpu: Callable[[int], float] = cpu_seconds

    def run(self, connections: int, seconds: float) -> Run:
        pids = [self.serving_pid, *([self.forwarder_pid] if self.forwarder_pid else [])]
        cpus = [cpu_seconds, self.forwarder_cpu]
        before = [cpu(pid) for cpu, pid in zip(cpus, pids, strict=False)]
        rate, p50, p99, errors, client_s = self.measure(connections, seconds)
        calls = max(rate * seconds, 1.0)
        used = [
            (cpu(pid) - b) / calls * 1e6 for cpu, pid, b in zip(cpus, pids, before, strict=False)
        ]
        return Run(
            rate=rate,
            p50_ms=p50,
            p99_ms=p99,
            errors=errors,
            forwarder_us=used[1] if self.forwarder_pid else None,
            serving_us=used[0],
            client_us=None if client_s is None else client_s / calls * 1e6,
        )


def wrk_target(
    name: str, url: str, script: Path, serving: int, forwarder: int | None, threads: int
) -> Target:
    def measure(connections: int, seconds: float) -> tuple[float, float, float, int, None]:
        r = run_wrk(url, script, connections, seconds, threads)
        return r.rate, r.p50_ms, r.p99_ms, r.errors, None

    return Target(name, serving, forwarder, measure)


def python_target(name: str, call: Callable[[], object], serving: int) -> Target:
    def measure(connections: int, seconds: float) -> tuple[float, float, float, int, float]:
        load = drive(call, connections, seconds)
        return load.rate, load.p50_ms, load.p99_ms, load.errors, load.cpu_s

    return Target(name, serving, None, measure)


def python_targets(
    stack: ExitStack, model: Model, on: Platform, body: Path, headers: dict[str, str]
) -> list[Target]:
    """httpx posting the ready-made binary body straight to the serving process, and the
    SDK in direct mode (it encodes the array and decodes the answer, as users call it)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    transport = httpx.HTTPTransport(socket_options=NODELAY, limits=limits)
    http = stack.enter_context(httpx.Client(transport=transport, timeout=60))
    sdk = stack.enter_context(Client(on.url, on.reader, direct=True))
    url = f"{on.direct}/v2/models/{model.name}/infer"
    content, x = body.read_bytes(), model.example()

    def plain() -> object:
        return http.post(url, content=content, headers=headers).raise_for_status().content

    def direct_sdk() -> object:
        return sdk.infer(model.name, x)

    return [
        python_target("py-direct", plain, on.serving_pid),
        python_target("sdk-direct", direct_sdk, on.serving_pid),
    ]


# -- the run ------------------------------------------------------------------------------


@dataclass
class Setup:
    """What one model is measured on."""

    on: Platform  # auth on: direct, embedded, the SDK
    off: Platform | None  # auth off: embedded-noauth
    gateway: tuple[str, int] | None  # the gateway process's URL and PID
    haproxy: tuple[str, int] | None  # the same with --engine haproxy


@dataclass
class Row:
    model: str
    body: str
    connections: int
    target: str
    run: Run
    ratio: float
    added_ms: float


def stable_bench(options: argparse.Namespace, root: Path) -> None:
    """Every target of every row in turn; the table, then the targets met or missed."""
    print(f"load average at start: {_load()}", flush=True)
    print(
        f"{'model':5} {'body':6} {'conc':>4} {'target':15} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'ratio':>6} {'+p50 ms':>7} {'fwd µs':>7} {'srv µs':>7} "
        f"{'cli µs':>7} {'errors':>6}",
        flush=True,
    )
    rows: list[Row] = []
    for name in options.models:
        model = MODELS[name]
        path, bodies = save(model, root), request_files(model, root)
        with ExitStack() as stack:
            setup = _setup(stack, options.targets, root, model, path)
            for encoding in options.encodings:
                with ExitStack() as clients:
                    targets = _targets(options, model, encoding, bodies[encoding], setup, clients)
                    for target in targets:  # unreported warm-up
                        target.measure(max(options.concurrency), options.warmup)
                    for connections in options.concurrency:
                        rows += _row(options, name, encoding, connections, targets)
        print(f"load average after {name}: {_load()}", flush=True)
    verdicts(rows, options.concurrency)


def _setup(stack: ExitStack, targets: list[str], root: Path, model: Model, path: Path) -> Setup:
    on = stack.enter_context(platform(root, model, path, auth=True))
    off = None
    if "embedded-noauth" in targets:
        off = stack.enter_context(platform(root, model, path, auth=False))
    gw = stack.enter_context(gateway(root, on, model.name)) if "gateway" in targets else None
    hp = None
    if "haproxy" in targets:
        hp = stack.enter_context(gateway(root, on, model.name, "haproxy"))
    return Setup(on, off, gw, hp)


def _targets(
    options: argparse.Namespace,
    model: Model,
    encoding: str,
    body: tuple[Path, dict[str, str]],
    setup: Setup,
    clients: ExitStack,
) -> list[Target]:
    on, off, gw = setup.on, setup.off, setup.gateway
    infer = f"/v2/models/{model.name}/infer"
    serve = f"/serve/{model.name}{infer}"
    plain = lua_script(*body, body[0].parent, "-plain")
    keyed = lua_script(body[0], {**body[1], **on.caller}, body[0].parent, "-key")
    threads = options.wrk_threads
    found = [wrk_target("direct", on.direct + infer, plain, on.serving_pid, None, threads)]
    if "embedded" in options.targets:
        pids = on.serving_pid, on.control_plane_pid
        found.append(wrk_target("embedded", on.url + serve, keyed, *pids, threads))
    if off is not None:
        pids = off.serving_pid, off.control_plane_pid
        found.append(wrk_target("embedded-noauth", off.url + serve, plain, *pids, threads))
    if gw is not None:
        found.append(wrk_target("gateway", gw[0] + serve, keyed, on.serving_pid, gw[1], threads))
    if setup.haproxy is not None:
        hp_url, hp_pid = setup.haproxy
        native = wrk_target("haproxy", hp_url + serve, keyed, on.serving_pid, hp_pid, threads)
        native.forwarder_cpu = tree_cpu_seconds
        found.append(native)
    wanted = {"py-direct", "sdk-direct"} & set(options.targets)
    if wanted and encoding == "binary":  # the SDK sends binary tensors only
        found += python_targets(clients, model, on, *body)
    return found


def _row(
    options: argparse.Namespace, model: str, encoding: str, connections: int, targets: list[Target]
) -> list[Row]:
    """``--repeat`` rounds over the targets in turn; the best run of each, printed."""
    runs: dict[str, list[Run]] = {t.name: [] for t in targets}
    for _ in range(options.repeat):
        for target in targets:
            runs[target.name].append(target.run(connections, options.duration))
    best = {name: max(got, key=lambda r: r.rate) for name, got in runs.items()}
    rows = []
    for name, run in best.items():
        base = best[BASE.get(name, "direct")]
        ratio = run.rate / base.rate if base.rate else float("nan")
        row = Row(model, encoding, connections, name, run, ratio, run.p50_ms - base.p50_ms)
        print(_line(row), flush=True)
        rows.append(row)
    return rows


def _line(row: Row) -> str:
    r = row.run

    def us(value: float | None) -> str:
        return "" if value is None else f"{value:,.0f}"

    base = row.target in ("direct", "py-direct")
    return (
        f"{row.model:5} {row.body:6} {row.connections:>4} {row.target:15} {r.rate:>8,.0f} "
        f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {row.ratio:>5.2f}x "
        f"{'' if base else f'{row.added_ms:+.2f}':>7} {us(r.forwarder_us):>7} "
        f"{us(r.serving_us):>7} {us(r.client_us):>7} {r.errors:>6}"
    )


def verdicts(rows: list[Row], concurrency: list[int]) -> None:
    """The issue's targets, each met or missed over every row it applies to."""
    high, low = max(concurrency), min(concurrency)
    print("\ntargets (auth on):")
    labels = (("embedded", "embedded (make up)"), ("gateway", "gateway process (python)"),
              ("haproxy", "gateway process (haproxy)"))  # fmt: skip
    for kind, label in labels:
        mine = [r for r in rows if r.target == kind]
        if not mine:
            print(f"  {label}: not measured")
            continue
        _verdict(f"{label}: >= {KEPT_AT_32}x direct at c={high}",
                 [r for r in mine if r.connections == high], lambda r: r.ratio,
                 lambda v: v >= KEPT_AT_32, "{:.2f}x")  # fmt: skip
        _verdict(f"{label}: < {ADDED_P50_AT_1_MS} ms added p50 at c={low}",
                 [r for r in mine if r.connections == low], lambda r: r.added_ms,
                 lambda v: v < ADDED_P50_AT_1_MS, "{:+.2f} ms")  # fmt: skip
        _verdict(f"{label}: CPU per call <= {CPU_SHARE} of the serving process's", mine,
                 lambda r: (r.run.forwarder_us or 0) / r.run.serving_us,
                 lambda v: v <= CPU_SHARE, "{:.2f}")  # fmt: skip
    sdk = [r for r in rows if r.target == "sdk-direct"]
    if sdk:
        _verdict(f"SDK direct: >= {SDK_KEPT}x the same Python load generator with httpx", sdk,
                 lambda r: r.ratio, lambda v: v >= SDK_KEPT, "{:.2f}x")  # fmt: skip
    else:
        print("  SDK direct: not measured")


def _verdict(
    label: str,
    rows: list[Row],
    value: Callable[[Row], float],
    ok: Callable[[float], bool],
    fmt: str,
) -> None:
    if not rows:
        return
    shown = ", ".join(f"{r.model} {r.body} c={r.connections} {fmt.format(value(r))}" for r in rows)
    met = all(ok(value(r)) for r in rows)
    print(f"  {label}: {'MET' if met else 'MISSED'} ({shown})")


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this run (shared with ``bench/inference.py --stable-url``)."""
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS,
                        help="stable-url: what to measure beside direct")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2, help="stable-url: rounds, best kept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--encodings", nargs="+", default=["binary", "json"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0, help="unreported seconds first")
    add_arguments(parser)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        stable_bench(options, Path(tmp))


if __name__ == "__main__":
    main()
