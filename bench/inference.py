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

`--stable-url` (`bench/stable_url.py`): the same models deployed on `modelplane up` (auth
on and off) and behind `python -m gateway`; direct vs the embedded stable URL vs the gateway
process vs the SDK's direct mode, measured in turn, with the CPU time per call of each process.
"""

from __future__ import annotations

import argparse
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
        "--stable-url", action="store_true", help="direct vs /serve/{d} vs gateway vs SDK direct"
    )
    if str(REPO) not in sys.path:  # run as a script: bench/ is not a package on the path
        sys.path.insert(0, str(REPO))
    from bench.stable_url import add_arguments, stable_bench

    add_arguments(parser)
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
