"""Inference benchmark: `python -m serving` under `wrk`, against calling the model in-process.

Builds the MLP (64→256→256→10) and a small CNN, serves each with `python -m serving` on a
free loopback port, and drives v2 infer calls with `wrk` (one thread, a Lua script whose
body is a ready-made request file) at several concurrencies, with and without dynamic
batching, binary and JSON tensors. Prints req/s, p50, p99 and the ratio of req/s to the
model's in-process calls/s (one batch-1 call at a time, one torch thread), all measured
in the same run, since the machine's other tenants make absolute numbers drift.

    .venv/bin/python bench/inference.py                        # the full grid
    .venv/bin/python bench/inference.py --models mlp --concurrency 32 --duration 10
    .venv/bin/python bench/inference.py --stable-url           # direct vs /serve/{name}

`--stable-url`: the model is pushed to a control plane (`modelplane server`, SQLite, files on
disk, auth off unless `--auth`), deployed, and served by the process one deployer worker
starts for it; each row is then measured twice in turn, straight to that serving process and
through the control plane's stable URL `/serve/{deployment}`, and the table shows what the
stable URL adds at p50 and the share of direct throughput it keeps.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = nn.Linear(16 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.flatten(1))


@dataclass
class Model:
    name: str
    module: nn.Module
    shape: list[int]  # one call's input, batch dimension first

    def example(self) -> np.ndarray:
        return np.random.default_rng(0).standard_normal(self.shape, dtype=np.float32)


MODELS = {"mlp": Model("mlp", MLP(), [1, 64]), "cnn": Model("cnn", SmallCNN(), [1, 1, 28, 28])}


def save(model: Model, root: Path) -> Path:
    model.module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.from_numpy(model.example()).repeat(2, *[1] * (len(model.shape) - 1))
    program = torch.export.export(model.module, (example,), dynamic_shapes={"x": {0: batch}})
    path = root / f"{model.name}.pt2"
    torch.export.save(program, path)
    return path


def in_process_rate(module: nn.Module, model: Model, seconds: float = 2.0) -> float:
    """Batch-1 calls per second of a bare module, one at a time, one torch thread."""
    torch.set_num_threads(1)
    x = torch.from_numpy(model.example())
    calls, deadline = 0, time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < deadline:
            for _ in range(100):
                module(x)
            calls += 100
    return calls / seconds


def request_files(model: Model, root: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """A binary and a JSON request body, each with the headers it needs."""
    x = model.example()
    tensor = {"name": "x", "datatype": "FP32", "shape": model.shape}
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    )
    binary, json_body = root / f"{model.name}.bin", root / f"{model.name}.json"
    binary.write_bytes(header + x.tobytes())
    json_body.write_bytes(orjson.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}))
    return {
        "binary": (binary, {"Inference-Header-Content-Length": str(len(header))}),
        "json": (json_body, {"Content-Type": "application/json"}),
    }


def lua_script(body: Path, headers: dict[str, str], root: Path, suffix: str = "") -> Path:
    lines = [
        f'local f = io.open("{body}", "rb")',
        "wrk.body = f:read('*all')",
        "f:close()",
        'wrk.method = "POST"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    ]
    script = root / f"{body.name}{suffix}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(path: Path, name: str, extra: list[str]) -> Iterator[str]:
    port = free_port()
    args = ["--name", name, "--format", "torch_export", "--path", str(path), "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", *args, *extra], cwd=REPO, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    timeout: float = 60,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url + "/v2/health/ready", headers=headers or {})
            with urllib.request.urlopen(request, timeout=1) as answer:
                if answer.status == 200:
                    time.sleep(0.5)  # other workers may still be warming up
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, script: Path, connections: int, seconds: float, threads: int) -> Result:
    command = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s"]
    out = subprocess.run(
        [*command, "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        print(f"    wrk: socket errors {socket_errors.group(1)}", file=sys.stderr)
    return Result(
        rate=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        errors=int(errors.group(1)) if errors else 0,
    )


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


SERVER_SETUPS = {  # the defaults are --executor auto (inline for these models), no delay
    "batching": ["--max-batch-size", "32"],
    "no-batching": ["--max-batch-size", "1"],
    "batching-thread": ["--max-batch-size", "32", "--executor", "thread"],
    "no-batching-thread": ["--max-batch-size", "1", "--executor", "thread"],
    "batching-2w": ["--max-batch-size", "32", "--workers", "2"],
    "delay-1ms": ["--max-batch-size", "32", "--max-delay-ms", "1"],
    "delay-1ms-lone": ["--max-batch-size", "32", "--max-delay-ms", "1", "--batch-wait-lone"],
}


@dataclass
class Deployed:
    direct: str  # the serving process's base URL
    stable: str  # the control plane's /serve/{deployment}
    headers: dict[str, str]  # for the stable URL (an API key when auth is on)


@contextmanager
def deployed(
    path: Path, model: Model, setup: list[str], root: Path, auth: bool
) -> Iterator[Deployed]:
    """A control plane and a deployer worker on loopback, the model deployed on it."""
    if str(REPO) not in sys.path:  # run as a script: bench/ is not a package on the path
        sys.path.insert(0, str(REPO))
    from bench._common import ControlPlane

    home = root / f"home-{model.name}-{time.monotonic_ns()}"
    home.mkdir()
    env = {"MODELPLANE_HOME": str(home), "MODELPLANE_AUTH_ENABLED": str(auth).lower()}
    cp = ControlPlane(env, log=home / "cp.log")
    worker: subprocess.Popen[bytes] | None = None
    try:
        headers, worker_env = {}, os.environ.copy()
        if auth:
            creds = orjson.loads((home / "credentials.json").read_bytes())
            headers = {"Authorization": f"Bearer {creds['token']}"}
            worker_env["MODELPLANE_WORKER_TOKEN"] = _worker_key(cp.url, headers)
        api = f"{cp.url}/api/v1"
        _push(api, headers, model, path)
        port = free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "deployer", "--control-plane", cp.url, "--name", "bench",
             "--cache-dir", str(home / "cache"), "--cpu-slots", "1",
             "--port-range", f"{port}-{port + 50}"],
            cwd=REPO, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        batch = (
            int(setup[setup.index("--max-batch-size") + 1]) if "--max-batch-size" in setup else 32
        )
        body = {
            "name": model.name, "model": model.name, "version": 1, "device": "cpu",
            "batching": {"max_batch_size": batch, "max_delay_ms": 0},
        }  # fmt: skip
        _call("POST", f"{api}/deployments", headers, body)
        direct = _wait_endpoint(api, model.name, headers, worker)
        stable = f"{cp.url}/serve/{model.name}"
        wait_ready(stable, worker, headers=headers)
        yield Deployed(direct, stable, headers)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        cp.stop()


def _call(method: str, url: str, headers: dict[str, str], body: object = None) -> object:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return orjson.loads(answer.read() or b"null")


def _worker_key(cp: str, headers: dict[str, str]) -> str:
    key = _call(
        "POST", f"{cp}/api/v1/keys", headers, {"name": "bench-worker", "scopes": ["worker"]}
    )
    return str(key["token"])  # type: ignore[index]


def _push(api: str, headers: dict[str, str], model: Model, path: Path) -> None:
    data = path.read_bytes()
    _call("POST", f"{api}/models", headers, {"name": model.name})
    shape = [-1, *model.shape[1:]]
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}]}
    manifest = [{"path": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    body = {"files": manifest, "format": "torch_export", "signature": signature}
    _call("POST", f"{api}/models/{model.name}/versions", headers, body)
    put = urllib.request.Request(
        f"{api}/models/{model.name}/versions/1/files/{path.name}", data=data, method="PUT",
        headers=headers,
    )  # fmt: skip
    with urllib.request.urlopen(put, timeout=60):
        pass
    _call("POST", f"{api}/models/{model.name}/versions/1/finalize", headers)


def _wait_endpoint(
    api: str, name: str, headers: dict[str, str], worker: subprocess.Popen[bytes]
) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the deployer worker exited with {worker.returncode}")
        page = _call("GET", f"{api}/deployments/{name}/endpoints", headers)
        ready = [e["url"] for e in page["items"] if e["status"] == "ready"]  # type: ignore[index]
        if ready:
            return str(ready[0])
        time.sleep(0.2)
    raise TimeoutError(f"deployment {name} has no ready endpoint after 120s")


def stable_bench(options: argparse.Namespace, root: Path) -> None:
    """Direct vs the stable URL: same serving process, same load, measured in turn."""
    print(
        f"{'model':5} {'setup':11} {'body':6} {'conc':>4} {'direct/s':>9} {'stable/s':>9} "
        f"{'kept':>6} {'p50 direct':>10} {'p50 stable':>10} {'added':>7} "
        f"{'p99 direct':>10} {'p99 stable':>10} {'errors':>6}"
    )
    for name in options.models:
        model = MODELS[name]
        path, bodies = save(model, root), request_files(model, root)
        for setup in options.setups:
            with deployed(path, model, SERVER_SETUPS[setup], root, options.auth) as where:
                for encoding in options.encodings:
                    body, headers = bodies[encoding]
                    script = lua_script(body, headers, root)
                    authed = lua_script(body, {**headers, **where.headers}, root, suffix="auth")
                    runs = {
                        "direct": (f"{where.direct}/v2/models/{name}/infer", script),
                        "stable": (f"{where.stable}/v2/models/{name}/infer", authed),
                    }
                    if options.warmup:
                        for target, lua in runs.values():
                            run_wrk(target, lua, max(options.concurrency), options.warmup, 1)
                    for connections in options.concurrency:
                        got: dict[str, list[Result]] = {"direct": [], "stable": []}
                        for _ in range(options.repeat):  # alternate: drift hits both alike
                            for kind, (target, lua) in runs.items():
                                got[kind].append(
                                    run_wrk(
                                        target, lua, connections, options.duration,
                                        options.wrk_threads,
                                    )
                                )  # fmt: skip
                        d, st = _median_result(got["direct"]), _median_result(got["stable"])
                        print(
                            f"{name:5} {setup:11} {encoding:6} {connections:>4} {d.rate:>9,.0f} "
                            f"{st.rate:>9,.0f} {st.rate / d.rate:>5.2f}x {d.p50_ms:>10.2f} "
                            f"{st.p50_ms:>10.2f} {st.p50_ms - d.p50_ms:>+7.2f} {d.p99_ms:>10.2f} "
                            f"{st.p99_ms:>10.2f} {d.errors + st.errors:>6}",
                            flush=True,
                        )


def _median_result(results: list[Result]) -> Result:
    import statistics

    return Result(
        rate=statistics.median(r.rate for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--setups", nargs="+", default=["batching", "no-batching"])
    parser.add_argument("--encodings", nargs="+", default=["binary", "json"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0, help="unreported wrk seconds first")
    parser.add_argument(
        "--stable-url", action="store_true", help="direct vs /serve/{deployment}, same run"
    )
    parser.add_argument("--auth", action="store_true", help="stable URL with auth on (a key)")
    parser.add_argument("--repeat", type=int, default=3, help="stable-url: runs per side")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install -y wrk)")
    os.environ.setdefault("MODELPLANE_SERVING_LOG_LEVEL", "error")
    with tempfile.TemporaryDirectory() as tmp:
        if options.stable_url:
            stable_bench(options, Path(tmp))
        else:
            bench(options, Path(tmp))


def bench(options: argparse.Namespace, root: Path) -> None:
    print(
        f"{'model':5} {'setup':17} {'body':6} {'conc':>4} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'vs in-process':>13} {'errors':>6}"
    )
    for name in options.models:
        model = MODELS[name]
        path, bodies = save(model, root), request_files(model, root)
        ceiling = in_process_rate(model.module, model)
        served = in_process_rate(torch.export.load(path).module(), model)
        print(
            f"{name:5} in-process calls/s, batch 1, 1 thread: eager module {ceiling:,.0f} "
            f"(the ratio's base); the loaded .pt2 the server runs {served:,.0f}"
        )
        for setup in options.setups:
            with server(path, name, SERVER_SETUPS[setup]) as url:
                for encoding in options.encodings:
                    script = lua_script(*bodies[encoding], root)
                    target = f"{url}/v2/models/{name}/infer"
                    if options.warmup:
                        run_wrk(target, script, max(options.concurrency), options.warmup, 1)
                    for connections in options.concurrency:
                        r = run_wrk(
                            target, script, connections, options.duration, options.wrk_threads
                        )
                        print(
                            f"{name:5} {setup:17} {encoding:6} {connections:>4} {r.rate:>8,.0f} "
                            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.rate / ceiling:>12.1%} "
                            f"{r.errors:>6}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
