"""Deploy-time optimisation in the serving process: make (or reuse) the optimised artifact,
check it against the original on the version's example inputs, measure both, and load what
passed into the runtime that serves. Raises `OptimizationRefused` with the figures when the
deployment's limits are breached: the endpoint fails before any traffic reaches it.

The artifact is made once per (source sha256, mode, runtime version, device kind) under the
worker's `optimized_cache_dir`; TorchScript is quantized in a child process, because
`quantize_dynamic_jit` crashes the process on some scripted graphs (a scripted
nn.TransformerEncoder segfaults on torch 2.x) and a crash should fail the check, not the
serving process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contract.enums import Device
from contract.optimize import (
    AUTO_LIMITS,
    CPU_BF16_FLAGS,
    EXAMPLES_FILE,
    SUPPORTED,
    Candidate,
    OptimizationReport,
    Optimize,
    OptimizeMode,
    checkable,
)
from serving.artifacts import ArtifactError, verify_sha256
from serving.runtimes.base import Inputs, Runtime, example_input
from serving.settings import ServingSettings

log = logging.getLogger("serving.optimize")
Report = Callable[[dict[str, Any]], None]
LATENCY_CALLS = 7


class OptimizationRefused(ArtifactError):
    """The optimised model failed its accuracy check (or could not be made)."""


def apply_optimization(runtime: Runtime, settings: ServingSettings, report: Report) -> None:
    """Load `runtime` with the optimised model `settings.optimize` asks for; `report` gets
    the figures (also when the check fails, before this raises)."""
    if not settings.sha256_verified:  # the artifact is cached under the source's digest
        verify_sha256(settings.path, settings.sha256)
    optimize, mode = settings.optimize, settings.optimize.mode
    reference = type(runtime)(runtime.format, runtime.options)
    reference.load(settings.path)
    examples = _examples(reference, settings.path)
    if not examples and not optimize.unchecked:
        raise OptimizationRefused(
            f"optimize {mode.value}: the version has no example input to check against "
            "(set optimize.unchecked to serve it unchecked)"
        )
    probe = examples[0] if examples else {s.name: example_input(s) for s in reference.inputs}
    figures = OptimizationReport(
        requested=mode,
        applied=mode,
        passed=True,
        unchecked=not examples,
        examples=len(examples),
        size_bytes_before=_size(settings.path),
        latency_ms_before=_latency(reference, probe),
        runtime_version=_runtime_version(runtime),
        device=_device_kind(settings),
    )
    expected = [reference.predict(e) for e in examples]
    try:
        chosen = _choose(runtime, reference, settings, figures, probe, examples, expected)
    finally:
        reference.unload()
    report(figures.model_dump(mode="json"))
    if not figures.passed:
        raise OptimizationRefused(figures.reason or "the accuracy check failed")
    _load_into(runtime, chosen, settings.path)
    log.info("optimize %s: %s", mode.value, figures.model_dump_json(exclude_none=True))


def _choose(
    runtime: Runtime,
    reference: Runtime,
    settings: ServingSettings,
    figures: OptimizationReport,
    probe: Inputs,
    examples: list[Inputs],
    expected: list[Any],
) -> tuple[OptimizeMode, Path | None]:
    """The mode to serve and its artifact (None: the original); fills `figures`."""
    optimize = settings.optimize
    modes = _candidates(runtime.format, optimize.mode, _device_kind(settings), figures)
    limits = _auto_limits(optimize) if optimize.mode is OptimizeMode.auto else optimize
    best: tuple[float, OptimizeMode, Path, OptimizationReport] | None = None
    for mode in modes:
        trial = figures.model_copy()
        try:
            artifact, trial.cache_hit = _artifact(reference, mode, settings)
            candidate = type(runtime)(runtime.format, runtime.options)
            _load_into(candidate, (mode, artifact), settings.path)
        except Exception as exc:
            reason = f"{mode.value} could not be made: {type(exc).__name__}: {exc}"
            figures.candidates.append(Candidate(mode=mode, passed=False, reason=reason))
            if optimize.mode is not OptimizeMode.auto:
                figures.passed, figures.reason = False, reason
                return OptimizeMode.none, None
            continue
        _compare(candidate, examples, expected, trial)
        trial.latency_ms_after = _latency(candidate, probe)
        trial.size_bytes_after = _size(artifact)
        candidate.unload()
        breaches = limits.breaches(trial)
        figures.candidates.append(
            Candidate(
                mode=mode,
                latency_ms=trial.latency_ms_after,
                passed=not breaches,
                reason="; ".join(breaches) or None,
            )
        )
        if optimize.mode is not OptimizeMode.auto:
            figures.__dict__.update(trial.__dict__ | {"candidates": figures.candidates})
            if breaches:
                figures.passed = False
                figures.reason = (
                    f"optimize {mode.value} failed its accuracy check on {len(examples)} "
                    f"example call(s): {'; '.join(breaches)}"
                )
            return mode, artifact
        if not breaches and (best is None or (trial.latency_ms_after or 0) < best[0]):
            best = (trial.latency_ms_after or 0.0, mode, artifact, trial)
    if optimize.mode is not OptimizeMode.auto:  # the one mode is unavailable here
        figures.applied = OptimizeMode.none
        return OptimizeMode.none, None
    return _auto_pick(figures, best)


def _auto_pick(
    figures: OptimizationReport,
    best: tuple[float, OptimizeMode, Path, OptimizationReport] | None,
) -> tuple[OptimizeMode, Path | None]:
    before = figures.latency_ms_before or 0.0
    if best is None or best[0] >= before:
        figures.applied = OptimizeMode.none
        tried = (
            ", ".join(
                f"{c.mode.value} ({c.reason or f'{c.latency_ms:.3g} ms'})"
                for c in figures.candidates
            )
            or "no candidate for this device"
        )
        figures.reason = f"auto kept the original ({before:.3g} ms): {tried}"
        return OptimizeMode.none, None
    latency, mode, artifact, trial = best
    candidates = figures.candidates
    figures.__dict__.update(trial.__dict__ | {"candidates": candidates})
    figures.applied = mode
    figures.reason = (
        f"auto chose {mode.value}: fastest passing candidate ({latency:.3g} ms vs "
        f"{before:.3g} ms original)"
    )
    return mode, artifact


def _auto_limits(optimize: Optimize) -> Optimize:
    given = optimize.model_dump(exclude_none=True, exclude={"mode", "unchecked"})
    return AUTO_LIMITS.model_copy(update=given) if given else AUTO_LIMITS


def _candidates(
    fmt: str, mode: OptimizeMode, device: str, figures: OptimizationReport
) -> list[OptimizeMode]:
    supported = SUPPORTED.get(fmt, frozenset())
    if mode is OptimizeMode.auto:
        wanted = (
            [OptimizeMode.fp16, OptimizeMode.bf16]
            if device == "cuda"
            else [OptimizeMode.int8_dynamic, OptimizeMode.bf16]
        )
    else:
        wanted = [mode]
    out = []
    for each in wanted:
        if each not in supported:
            continue
        if each is OptimizeMode.bf16 and device == "cpu" and not cpu_has_bf16():
            reason = f"bf16: this CPU has none of {', '.join(CPU_BF16_FLAGS)}; not applied"
            figures.candidates.append(Candidate(mode=each, passed=False, reason=reason))
            figures.reason = reason  # a reasoned fallback: served as it is
            continue
        out.append(each)
    return out


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


# -- the artifact, cached ------------------------------------------------------------------


def _artifact(
    reference: Runtime, mode: OptimizeMode, settings: ServingSettings
) -> tuple[Path, bool]:
    """The optimised file for `mode` (made now, or found in the cache) and whether it was
    found."""
    graph, _ = reference.locate(settings.path)
    key = _cache_key(settings, mode, _runtime_version(reference))
    root = settings.optimized_cache_dir or settings.path.parent / ".optimized"
    directory = root / key
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / graph.name
    with _locked(directory / ".lock"):  # a second replica on this worker waits, then reuses
        if target.exists():
            log.info("optimize %s: reused cached artifact %s", mode.value, target)
            return target, True
        partial = directory / f".partial-{os.getpid()}{graph.suffix}"
        _make(reference.format, mode, graph, partial, _device_kind(settings))
        partial.rename(target)
    log.info("optimize %s: made artifact %s", mode.value, target)
    return target, False


def _cache_key(settings: ServingSettings, mode: OptimizeMode, runtime_version: str) -> str:
    sources = sorted(settings.sha256) or [_file_sha256(settings.path)]
    parts = [sources, mode.value, runtime_version, _device_kind(settings)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make(fmt: str, mode: OptimizeMode, source: Path, dest: Path, device: str) -> None:
    if fmt == "onnx":
        _make_onnx(mode, source, dest)
        return
    # torch: in a child, so a crash inside the quantizer is a refusal, not our exit
    done = subprocess.run(
        [sys.executable, "-m", "serving.optimize", fmt, mode.value, str(source), str(dest), device],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode < 0:
            why = f"the quantizer crashed (signal {-done.returncode})"
        raise OptimizationRefused(f"{mode.value} for {fmt}: {why}")


def _make_onnx(mode: OptimizeMode, source: Path, dest: Path) -> None:
    if mode is OptimizeMode.int8_dynamic:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8)
        return
    if mode is OptimizeMode.fp16:
        import onnx
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(dest))
        return
    raise OptimizationRefused(f"{mode.value} is not supported for format onnx")


def _make_torch(fmt: str, mode: OptimizeMode, source: Path, dest: Path, device: str) -> None:
    """In the child process: one torch artifact (TorchScript stays TorchScript; a pickled
    module stays pickled, already allowed by the deployment)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    scripted = fmt == "torchscript"
    module = (
        torch.jit.load(source, map_location="cpu")  # type: ignore[no-untyped-call]
        if scripted
        else torch.load(source, map_location="cpu", weights_only=False)
    ).eval()
    if mode is OptimizeMode.int8_dynamic:
        if scripted:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic_jit

            module = quantize_dynamic_jit(module, {"": default_dynamic_qconfig})  # type: ignore[no-untyped-call]
        else:
            layers = {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}
            module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                module, layers, dtype=torch.qint8
            )
    else:
        dtype = torch.float16 if mode is OptimizeMode.fp16 else torch.bfloat16
        module = module.to(device=device, dtype=dtype)
    if scripted:
        torch.jit.save(module, str(dest))
    else:
        torch.save(module, dest)


def _load_into(runtime: Runtime, chosen: tuple[OptimizeMode, Path | None], original: Path) -> None:
    mode, artifact = chosen
    if hasattr(runtime, "precision"):  # the torch runtime casts inputs for fp16/bf16
        runtime.precision = mode.value
    runtime.load(artifact or original)


# -- measuring -----------------------------------------------------------------------------


def _examples(runtime: Runtime, path: Path) -> list[Inputs]:
    """The recorded example input, plus `examples.npz` (one call, arrays by input name)."""
    out = []
    if checkable(runtime.options.signature.example) and (recorded := runtime.example()):
        out.append(recorded)
    directory = path if path.is_dir() else path.parent
    if (npz := directory / EXAMPLES_FILE).is_file():
        with np.load(npz, allow_pickle=False) as arrays:
            names = [s.name for s in runtime.inputs]
            loaded = {k: arrays[k] for k in arrays.files}
            if set(loaded) <= set(names) or not names:
                out.append(loaded)
            else:  # arr_0, arr_1, ...: the model's inputs in order
                out.append(dict(zip(names, (loaded[k] for k in sorted(loaded)), strict=False)))
    return out


def _compare(
    candidate: Runtime, examples: list[Inputs], expected: list[Any], into: OptimizationReport
) -> None:
    abs_err, rel_err, agree, rows = 0.0, 0.0, 0, 0
    for inputs, want in zip(examples, expected, strict=True):
        got = candidate.predict(inputs)
        for name, tensor in want.items():
            a = np.asarray(tensor.data)
            if a.dtype.kind != "f" or name not in got:
                continue
            b = np.asarray(got[name].data, dtype=np.float64)
            a = a.astype(np.float64)
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            abs_err = max(abs_err, diff)
            scale = float(np.max(np.abs(a))) if a.size else 0.0
            rel_err = max(rel_err, diff / scale if scale > 0 else diff)
            if a.ndim == 2 and a.shape[1] > 1:
                agree += int(np.sum(a.argmax(1) == b.argmax(1)))
                rows += a.shape[0]
    if examples:
        into.max_abs_error, into.max_rel_error = abs_err, rel_err
        into.top1_agreement = agree / rows if rows else None


def _latency(runtime: Runtime, probe: Inputs) -> float | None:
    """Median single-call latency in ms, warm."""
    if not runtime.checked and not probe:
        return None
    runtime.predict(probe)
    timings = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        runtime.predict(probe)
        timings.append((time.perf_counter() - started) * 1000)
    return round(sorted(timings)[len(timings) // 2], 4)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _runtime_version(runtime: Runtime) -> str:
    if runtime.format == "onnx":
        import onnxruntime

        return f"onnxruntime-{onnxruntime.__version__}"
    import torch

    return f"torch-{torch.__version__}"


def _device_kind(settings: ServingSettings) -> str:
    return "cuda" if settings.device is Device.cuda else "cpu"


if __name__ == "__main__":  # the child that makes a torch artifact (see `_make`)
    fmt, mode, source, dest, device = sys.argv[1:6]
    _make_torch(fmt, OptimizeMode(mode), Path(source), Path(dest), device)
