"""Deploy-time int8_dynamic, in process: the serving runtime's predict on the original vs the
optimised artifact (made by serving.optimize, as a serving process makes it), per model:
single-call latency, artifact size, max abs error and top-1 agreement on random inputs.

    .venv/bin/python -m bench.optimize

Served req/s (concurrency 1 and 16 through a serving process) is not measured yet.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

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


def main() -> None:
    torch.set_num_threads(1)
    rows = []
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


if __name__ == "__main__":
    main()
