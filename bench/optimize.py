"""Deploy-time int8_dynamic: the original vs the optimised artifact (made by serving.optimize,
as a serving process makes it), per model.

In process: the serving runtime's predict, single-call latency, artifact size, max abs error
and top-1 agreement on random inputs. Served: one `python -m serving` process per artifact
(the optimised one made by the process itself from the original, as a deployment with
`optimize: int8_dynamic` does), v2 binary-tensor infer calls driven by `wrk` at concurrency
1 and 16, original and optimised in turn (twice each, best kept), req/s and p50.

    .venv/bin/python -m bench.optimize                  # in process and served
    .venv/bin/python -m bench.optimize --no-served      # in process only

Traffic goes to 127.0.0.1 only; each server is stopped by PID.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench._common import ROOT, free_port, require_wrk
from bench.inference import lua_script, run_wrk, wait_ready
from contract.examples import encode_example
from serving.optimize import apply_optimization
from serving.server import build_app
from serving.settings import ServingSettings

warnings.filterwarnings("ignore")


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # type: ignore[no-any-return]


def models() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    layer = nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True, dropout=0.0)
    encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    return [
        ("mlp", mlp, (1, 64)),
        ("cnn", Cnn(), (1, 3, 32, 32)),
        ("encoder", encoder, (1, 128, 512)),
    ]


def latency_ms(predict, x: dict[str, np.ndarray], calls: int = 30) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):
        predict(x)
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(x)
        timings.append((time.perf_counter() - started) * 1000)
    return sorted(timings)[calls // 2]


@contextmanager
def serving(settings: ServingSettings) -> Iterator[str]:
    """``python -m serving`` on a free loopback port with these settings (as a worker
    passes them: JSON in the environment); its URL once ready."""
    port = free_port()
    spec = settings.model_copy(update={"port": port}).spec().model_dump_json()
    env = {**os.environ, "MODELPLANE_SERVING_SETTINGS_JSON": spec}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=300)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def request_body(shape: tuple[int, ...], root: Path) -> Path:
    """A v2 binary-tensor infer call (binary answer too: JSON text would dominate)."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = root / "request.bin"
    body.write_bytes(header + x.tobytes())
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return lua_script(body, headers, root)


def served(
    name: str, settings: ServingSettings, shape: tuple[int, ...], root: Path, seconds: float
) -> list[tuple[str, int, float, float, float, float]]:
    """Per concurrency: (model, c, original req/s, int8 req/s, original p50, int8 p50)."""
    script = request_body(shape, root)
    plain = settings.model_copy(update={"optimize": {"mode": "none"}})
    rows = []
    with serving(plain) as before_url, serving(settings) as after_url:
        for connections in (1, 16):
            best: dict[str, tuple[float, float]] = {}
            for _ in range(2):  # in turn, so drift hits both alike
                for label, url in (("before", before_url), ("after", after_url)):
                    result = run_wrk(
                        f"{url}/v2/models/{name}/infer", script, connections, seconds, 1
                    )
                    if result.errors:
                        raise RuntimeError(f"{label} answered {result.errors} errors")
                    if label not in best or result.rate > best[label][0]:
                        best[label] = (result.rate, result.p50_ms)
            rows.append(
                (name, connections, best["before"][0], best["after"][0],
                 best["before"][1], best["after"][1])
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-served", action="store_true", help="in-process figures only")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    options = parser.parse_args()
    if not options.no_served:
        require_wrk()
    torch.set_num_threads(1)
    rows = []
    served_rows = []
    for name, module, shape in models():
        root = Path(tempfile.mkdtemp())
        module.eval()
        x = torch.randn(*shape)
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(module, x, check_trace=False), buffer)
        (root / "model.pt").write_bytes(buffer.getvalue())
        example = x.numpy() if x.numel() <= 1024 else None
        signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *shape[1:]]}]}
        if example is not None:
            signature["example"] = encode_example(example)
        settings = ServingSettings(
            name=name,
            format="torchscript",
            path=root / "model.pt",
            signature=json.dumps(signature),
            optimized_cache_dir=root / "opt",
            optimize={"mode": "int8_dynamic", "unchecked": example is None},
        )
        original = build_app(settings.model_copy(update={"optimize": {"mode": "none"}})).runtime
        original.load(settings.path)
        optimised = build_app(settings).runtime
        reports: list[dict] = []  # type: ignore[type-arg]
        apply_optimization(optimised, settings, reports.append)
        rng = np.random.default_rng(0)
        inputs = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(64)]
        errors, agree, rows_seen = [], 0, 0
        for each in inputs:
            a = original.predict(each)
            b = optimised.predict(each)
            ya, yb = next(iter(a.values())).data, next(iter(b.values())).data
            errors.append(float(np.max(np.abs(ya - yb))))
            flat_a, flat_b = ya.reshape(-1, ya.shape[-1]), yb.reshape(-1, yb.shape[-1])
            agree += int(np.sum(flat_a.argmax(1) == flat_b.argmax(1)))
            rows_seen += flat_a.shape[0]
        before = latency_ms(original.predict, inputs[0])
        after = latency_ms(optimised.predict, inputs[0])
        report = reports[0]
        if not options.no_served:
            served_rows += served(name, settings, shape, root, options.seconds)
        rows.append(
            (
                name,
                before,
                after,
                report["size_bytes_before"],
                report["size_bytes_after"],
                max(errors),
                agree / rows_seen,
            )
        )
    print(
        f"{'model':8} {'orig ms':>8} {'int8 ms':>8} {'speed-up':>8} {'size':>10} {'int8 size':>10}"
        f" {'max abs err':>11} {'top-1':>6}"
    )
    for name, before, after, sb, sa, err, top1 in rows:
        print(
            f"{name:8} {before:8.3f} {after:8.3f} {before / after:7.2f}x {sb:10d} {sa:10d}"
            f" {err:11.4g} {top1:6.3f}"
        )
    if served_rows:
        print(
            f"\n{'model':8} {'c':>3} {'orig req/s':>10} {'int8 req/s':>10} {'ratio':>6}"
            f" {'orig p50':>9} {'int8 p50':>9}"
        )
        for name, c, before, after, p50_before, p50_after in served_rows:
            print(
                f"{name:8} {c:3d} {before:10.1f} {after:10.1f} {after / before:5.2f}x"
                f" {p50_before:8.2f}ms {p50_after:8.2f}ms"
            )


if __name__ == "__main__":
    main()
