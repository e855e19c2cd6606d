"""Runtimes side by side: the same weights served as `torch.export` and as ONNX, and a
scikit-learn forest served via ONNX against `estimator.predict` in process.

For the MLP (64→256→256→10) and the small CNN of `bench/inference.py` (same classes, same
seed): saves the `.pt2` that bench exports and an ONNX file of the same module
(`torch.onnx.export`, dynamic batch, input `x`, output `output0`), starts one `python -m
serving` per runtime at once (`--max-batch-size 32`, otherwise the defaults: the model
inline on the event loop when a warm-up call is under 2 ms, one intra-op thread), and
drives both with `wrk` (binary v2 body, one wrk thread) at each concurrency, alternating
torch and ONNX run by run (`--repeat` runs each, medians), so the machine's other tenants
weigh on both alike. Each row's ratio is to that runtime's own in-process call rate
(batch 1, one call at a time, one thread, measured in the same run): the loaded `.pt2`
module for torch, an `onnxruntime.InferenceSession` for ONNX; the rate of our runtime's
`predict` (`serving.runtimes`, what the server calls) is printed beside it.

Then a `RandomForestClassifier` (100 trees, 20 features, 3 classes) converted as
`Client.push_sklearn` does, served via ONNX, against `estimator.predict` on one row in
process: the req/s ratio.

    .venv/bin/python -m bench.runtimes                                  # everything
    .venv/bin/python -m bench.runtimes --models mlp --concurrency 32 --duration 5 --repeat 1

(`-m` from the repository root: `bench/harness.py` shadows the standard library's
`platform` when run as a script. Needs `wrk`: `apt-get install -y wrk`.) Traffic goes to
127.0.0.1 only; every server is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from bench.inference import (
    MODELS,
    Model,
    Result,
    free_port,
    lua_script,
    run_wrk,
    save,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[1]
SETUP = ["--max-batch-size", "32"]
TARGET_OF_IN_PROCESS = 0.45  # at concurrency 32


@dataclass
class Served:
    runtime: str  # torch, onnx
    format: str
    path: Path
    base: float  # its own in-process calls/s (batch 1, one thread)
    wrapped: float  # our runtime's predict in process, calls/s


def export_onnx(model: Model, root: Path) -> Path:
    path = root / f"{model.name}.onnx"
    example = torch.from_numpy(model.example()).repeat(2, *[1] * (len(model.shape) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.module.eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["output0"],
            dynamic_axes={"x": {0: "batch"}, "output0": {0: "batch"}},
        )
    return path


def rate(call: Callable[[], object], seconds: float = 2.0) -> float:
    """Calls per second of `call`, one at a time."""
    for _ in range(50):
        call()
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            call()
        calls += 50
    return calls / (time.perf_counter() - started)


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def in_process_torch(eager: Any, loaded: Any, x: np.ndarray) -> tuple[float, float]:
    """Calls/s of the eager module and of the loaded `.pt2` one (what the server runs)."""
    tensor = torch.from_numpy(x)
    with torch.inference_mode():
        return rate(lambda: eager(tensor)), rate(lambda: loaded(tensor))


def ort_rate(path: Path, inputs: dict[str, np.ndarray]) -> float:
    session = ort_session(path)
    return rate(lambda: session.run(None, inputs))


def runtime_rate(fmt: str, path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Our runtime's `predict` (what the serving process calls), in process."""
    from serving.runtimes import RuntimeOptions, runtime_for

    runtime = runtime_for(fmt)(fmt, RuntimeOptions())
    runtime.load(path)
    try:
        return rate(lambda: runtime.predict(inputs))
    finally:
        runtime.unload()


def body(root: Path, label: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Path:
    """A binary v2 request (every input and output binary) and its wrk script."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
                for name, x in inputs.items()
            ],
            "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
        }
    )
    path = root / f"{label}.bin"
    path.write_bytes(header + b"".join(x.tobytes() for x in inputs.values()))
    return lua_script(path, {"Inference-Header-Content-Length": str(len(header))}, root)


@dataclass
class Target:
    base: str  # the serving process's URL
    infer: str  # its infer URL
    pid: int
    script: Path | None = None


@contextmanager
def server(path: Path, name: str, fmt: str, log: Path) -> Iterator[Target]:
    port = free_port()
    args = ["--name", name, "--format", fmt, "--path", str(path), "--port", str(port), *SETUP]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=120)
        yield Target(url, f"{url}/v2/models/{name}/infer", process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Cost:
    """Where a served call's time goes: the serving process's CPU per request and the mean
    batch the model ran (from its /metrics)."""

    cpu_us: float
    batch: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def batches(target: Target) -> tuple[float, float]:
    """(model runs, calls in them) so far, from the serving process's /metrics."""
    with urllib.request.urlopen(f"{target.base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {
        key: float(m.group(1))
        for key in ("count", "sum")
        if (
            m := re.search(
                rf"^modelplane_inference_batch_size_{key}\{{[^}}]*\}} (\S+)$", text, re.M
            )
        )
    }
    return found.get("count", 0.0), found.get("sum", 0.0)


def median(results: list[Result]) -> Result:
    return Result(
        rate=statistics.median(r.rate for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
    )


def alternate(
    targets: dict[str, Target], options: argparse.Namespace, connections: int
) -> tuple[dict[str, Result], dict[str, Cost]]:
    """`--repeat` wrk runs per target, interleaved: the median of each, and its cost."""
    runs: dict[str, list[Result]] = {key: [] for key in targets}
    spent = {key: [0.0, 0.0, 0.0] for key in targets}  # CPU seconds, model runs, calls
    for _ in range(options.repeat):
        for key, target in targets.items():
            assert target.script is not None
            cpu, (count, summed) = cpu_seconds(target.pid), batches(target)
            result = run_wrk(target.infer, target.script, connections, options.duration, 1)
            runs[key].append(result)
            count_after, summed_after = batches(target)
            totals = spent[key]
            totals[0] += cpu_seconds(target.pid) - cpu
            totals[1] += count_after - count
            totals[2] += summed_after - summed  # one call per request
    costs = {
        key: Cost(cpu / max(calls, 1) * 1e6, calls / max(model_runs, 1))
        for key, (cpu, model_runs, calls) in spent.items()
    }
    return {key: median(results) for key, results in runs.items()}, costs


HEADER = (
    f"{'model':6} {'runtime':7} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'vs own in-process':>17} {'onnx/torch':>10} {'errors':>6}"
)


def models_bench(options: argparse.Namespace, root: Path) -> None:
    torch.set_num_threads(1)
    for name in options.models:
        model = MODELS[name]
        pt2, onnx_path = save(model, root), export_onnx(model, root)
        x = model.example()
        eager, exported = in_process_torch(model.module, torch.export.load(pt2).module(), x)
        served = {
            "torch": Served(
                "torch", "torch_export", pt2, exported, runtime_rate("torch_export", pt2, {"x": x})
            ),
            "onnx": Served(
                "onnx",
                "onnx",
                onnx_path,
                ort_rate(onnx_path, {"x": x}),
                runtime_rate("onnx", onnx_path, {"x": x}),
            ),
        }
        print(
            f"\n{name}: in-process calls/s, batch 1, one thread: eager module {eager:,.0f}; "
            f"loaded .pt2 {served['torch'].base:,.0f} (runtime.predict "
            f"{served['torch'].wrapped:,.0f}); onnxruntime {served['onnx'].base:,.0f} "
            f"(runtime.predict {served['onnx'].wrapped:,.0f})"
        )
        script = body(root, name, {"x": x}, ["output0"])
        with ExitStack() as stack:
            targets = {
                key: stack.enter_context(server(s.path, name, s.format, root / f"{name}-{key}.log"))
                for key, s in served.items()
            }
            for target in targets.values():
                target.script = script
                run_wrk(target.infer, script, max(options.concurrency), options.warmup, 1)
            print(HEADER)
            for connections in options.concurrency:
                results, costs = alternate(targets, options, connections)
                versus = results["onnx"].rate / results["torch"].rate
                for key, r in results.items():
                    share = r.rate / served[key].base
                    flag = ""
                    if key == "onnx" and connections == 32:
                        flag = " ok" if share >= TARGET_OF_IN_PROCESS else " MISSED"
                    print(
                        f"{name:6} {key:7} {connections:>4} {r.rate:>8,.0f} {r.p50_ms:>7.2f} "
                        f"{r.p99_ms:>7.2f} {share:>16.1%}{flag:<1} "
                        f"{versus if key == 'onnx' else 1.0:>10.2f} {r.errors:>6}",
                        flush=True,
                    )
        for key, cost in costs.items():  # of the largest concurrency
            where(name, key, served[key].format, served[key].path, {"x": x}, cost)


def where(
    name: str, key: str, fmt: str, path: Path, inputs: dict[str, np.ndarray], cost: Cost
) -> None:
    """The serving process's CPU per request against the model's share of it: our
    runtime's `predict` in process at the mean batch the server ran, per call."""
    rows = max(1, round(cost.batch))
    batch = {k: np.repeat(v, rows, axis=0) for k, v in inputs.items()}
    model_us = 1e6 / runtime_rate(fmt, path, batch) / rows
    print(
        f"  {name} {key}: serving CPU {cost.cpu_us:.0f} us/request at mean batch "
        f"{cost.batch:.1f}; the model's share {model_us:.1f} us ({model_us / cost.cpu_us:.0%}), "
        f"the rest HTTP, v2 decoding/encoding, batching"
    )


def forest_bench(options: argparse.Namespace, root: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from client.sklearn import convert

    rng = np.random.default_rng(0)
    features = rng.standard_normal((2000, 20))
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0.5).astype(int)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(features, labels)
    path = root / "forest.onnx"
    convert(forest, features[:8], path)
    row = features[:1].astype(np.float32)
    in_process = rate(lambda: forest.predict(row), seconds=3.0)
    onnxruntime = ort_rate(path, {"X": row})
    wrapped = runtime_rate("onnx", path, {"X": row})
    print(
        f"\nforest (RandomForestClassifier, 100 trees, 20 features), one row in process: "
        f"estimator.predict {in_process:,.0f} calls/s; onnxruntime {onnxruntime:,.0f}; "
        f"runtime.predict {wrapped:,.0f}"
    )
    script = body(root, "forest", {"X": row}, ["label", "probabilities"])
    columns = f"{'model':6} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    print(f"{columns} {'vs estimator.predict':>21}")
    with server(path, "forest", "onnx", root / "forest.log") as target:
        target.script = script
        run_wrk(target.infer, script, max(options.concurrency), options.warmup, 1)
        for connections in options.concurrency:
            results, costs = alternate({"onnx": target}, options, connections)
            r = results["onnx"]
            print(
                f"forest {connections:>4} {r.rate:>8,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
                f"{r.rate / in_process:>20.1f}x",
                flush=True,
            )
    where("forest", "onnx", "onnx", path, {"X": row}, costs["onnx"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per runtime, alternated")
    parser.add_argument("--warmup", type=float, default=2.0, help="unreported wrk seconds first")
    parser.add_argument("--no-forest", action="store_true", help="skip the scikit-learn forest")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install -y wrk)")
    os.environ.setdefault("MODELPLANE_SERVING_LOG_LEVEL", "error")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models_bench(options, root)
        if not options.no_forest:
            forest_bench(options, root)


if __name__ == "__main__":
    main()
