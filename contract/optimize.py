"""Deploy-time optimisation: the `optimize` setting of a deployment, which runtime × mode pairs
exist, and what a serving process reports back once it has applied one.

`optimize` is `"int8_dynamic"` or `{"mode": ..., "max_abs_error": ..., ...}`; it is stored
with each revision (in its settings), so it rolls out and rolls back like any setting. The
control plane refuses at deploy time what no worker could do (`refusal`); the serving process
makes the artifact (cached per source sha256, mode, runtime version and device kind), checks
it against the version's example inputs before any traffic, and reports the figures.

Errors: `max_abs_error` is max |optimised - original| over every output element;
`max_rel_error` is that divided by max |original| of the same output (relative to the
output's scale: an element-wise ratio explodes on values near zero); `top1_agreement` is the
share of rows whose argmax agrees, for 2-D floating outputs (classifier-like).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.enums import Device


class OptimizeMode(StrEnum):
    none = "none"
    int8_dynamic = "int8_dynamic"
    fp16 = "fp16"
    bf16 = "bf16"
    auto = "auto"


# format -> modes its runtime can apply (anything else is refused at deploy time). torch:
# TorchScript by graph-mode dynamic quantization (quantize_dynamic_jit: quantize_dynamic
# leaves a ScriptModule untouched), pickled modules by eager quantize_dynamic; torch.export
# programs and safetensors poured into a graph are not (their Linear layers are graph ops).
SUPPORTED: dict[str, frozenset[OptimizeMode]] = {
    "torchscript": frozenset({OptimizeMode.int8_dynamic, OptimizeMode.fp16, OptimizeMode.bf16}),
    "pickle": frozenset({OptimizeMode.int8_dynamic, OptimizeMode.fp16, OptimizeMode.bf16}),
    "onnx": frozenset({OptimizeMode.int8_dynamic, OptimizeMode.fp16}),
}
EXAMPLES_FILE = "examples.npz"  # a version's extra example inputs: arrays by input name
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Optimize(BaseModel):
    """A deployment's optimisation and the accuracy it must keep (limits are optional)."""

    model_config = ConfigDict(extra="forbid")
    mode: OptimizeMode = OptimizeMode.none
    max_abs_error: float | None = Field(default=None, ge=0)
    max_rel_error: float | None = Field(default=None, ge=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    unchecked: bool = Field(
        default=False,
        description="serve the optimised model without an accuracy check (no example input)",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_mode(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    def breaches(self, report: OptimizationReport) -> list[str]:
        """The limits `report`'s figures break, each as `name figure > limit`."""
        out = []
        if self.max_abs_error is not None and (report.max_abs_error or 0) > self.max_abs_error:
            out.append(f"max_abs_error {report.max_abs_error:.4g} > {self.max_abs_error:g}")
        if self.max_rel_error is not None and (report.max_rel_error or 0) > self.max_rel_error:
            out.append(f"max_rel_error {report.max_rel_error:.4g} > {self.max_rel_error:g}")
        agreement = report.top1_agreement
        if (
            self.min_top1_agreement is not None
            and agreement is not None
            and agreement < self.min_top1_agreement
        ):
            out.append(f"top1_agreement {agreement:.4g} < {self.min_top1_agreement:g}")
        return out


AUTO_LIMITS = Optimize(max_rel_error=0.05, min_top1_agreement=0.99)  # auto without limits


def refusal(
    optimize: Optimize, model_format: str | None, device: Device, examples: bool
) -> str | None:
    """Why the control plane refuses `optimize` for a version of `model_format` on `device`
    (`examples`: the version records an example input or carries examples.npz); None: fine.

    bf16 on a CPU (or `auto` device) is accepted: the control plane does not know the
    worker's processor; a worker whose CPU lacks avx512_bf16/amx_bf16 serves unoptimised
    and records why (the revision's `optimization.reason`)."""
    mode = optimize.mode
    if mode is OptimizeMode.none:
        return None
    fmt = model_format or "torchscript"
    supported = SUPPORTED.get(fmt, frozenset())
    if mode is OptimizeMode.auto:
        if not supported:
            return f"optimize auto: no optimisation is supported for format {fmt}"
    elif mode not in supported:
        kinds = ", ".join(sorted(m.value for m in supported)) or "none"
        return f"{mode.value} is not supported for format {fmt} (it supports: {kinds})"
    if mode is OptimizeMode.fp16 and device is not Device.cuda:
        return (
            f"fp16 needs a CUDA device: this deployment's device is {device.value} "
            "(half precision on a CPU is slower than float32); set device 'cuda' and gpus >= 1, "
            "or use int8_dynamic or bf16"
        )
    if not examples and not optimize.unchecked:
        return (
            f"optimize {mode.value}: the version records no example input to check the "
            "optimised model's accuracy against (push it with an example, or add "
            f"{EXAMPLES_FILE}); or set optimize.unchecked: true to serve it unchecked"
        )
    return None


def checkable(example: Any) -> bool:
    """A recorded example (contract.examples) carries data for every input: one recorded
    past MAX_EXAMPLE_ELEMENTS keeps only datatype and shape (zeros would check nothing)."""
    inputs = example.get("inputs") if isinstance(example, dict) else None
    if not inputs:
        return False
    return all(item.get("data") is not None for item in inputs)


class Candidate(BaseModel):
    """One mode `auto` tried."""

    mode: OptimizeMode
    latency_ms: float | None = None
    passed: bool
    reason: str | None = None


class OptimizationReport(BaseModel):
    """What a serving process did to its model before it turned ready (reported with its
    registration and heartbeats; shown per endpoint and on the revision)."""

    requested: OptimizeMode
    applied: OptimizeMode = Field(description="what serves: may be none after a fallback")
    passed: bool = Field(description="the accuracy check passed (or was skipped: unchecked)")
    reason: str | None = Field(default=None, description="why applied differs, or what failed")
    unchecked: bool = False
    examples: int = Field(default=0, description="example calls compared")
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    top1_agreement: float | None = None
    size_bytes_before: int | None = None
    size_bytes_after: int | None = None
    latency_ms_before: float | None = Field(default=None, description="single call, warm")
    latency_ms_after: float | None = None
    cache_hit: bool = Field(default=False, description="the optimised artifact was reused")
    runtime_version: str | None = None
    device: str | None = None
    candidates: list[Candidate] = Field(default_factory=list, description="auto: each tried")
