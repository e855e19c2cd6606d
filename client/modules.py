"""A live ``torch.nn.Module`` to a model file and its signature.

The signature is what serving and the deployer read (``serving/artifacts.parse_signature``):
``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``, datatypes in v2 names,
``-1`` for the batch dimension (dimension 0) when the model takes any batch size, so the
serving process may batch calls together.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

from client.errors import ModelplaneError
from contract.dtypes import torch_datatype
from contract.examples import encode_example

FORMATS = ("torchscript", "torch_export")
MAX_BATCH = 65536


def _datatype(tensor: Any) -> str:
    datatype = torch_datatype(tensor.dtype)
    if datatype is None:
        raise ModelplaneError(f"tensor dtype {tensor.dtype} has no v2 datatype")
    return datatype


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list | tuple) and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ModelplaneError("example_inputs must be a tensor or a tuple of tensors")


def flatten_outputs(result: Any) -> list[tuple[str, Any]]:
    """Output names as the serving runtime gives them: dict keys, else output0, output1…"""
    import torch

    if isinstance(result, torch.Tensor):
        return [("output0", result)]
    if isinstance(result, dict):
        return [(str(k), v) for k, v in result.items()]
    if isinstance(result, list | tuple):
        return [(f"output{i}", v) for i, v in enumerate(result)]
    raise ModelplaneError(f"the module returned {type(result).__name__}; expected tensors")


def input_names(module: Any, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input{i}" for i in range(count)]


def _spec(name: str, tensor: Any, batched: bool) -> dict[str, Any]:
    shape = list(tensor.shape)
    if batched and shape:
        shape[0] = -1
    return {"name": name, "datatype": _datatype(tensor), "shape": shape}


def signature(
    names: list[str], inputs: tuple[Any, ...], outputs: list[tuple[str, Any]], batched: bool
) -> dict[str, Any]:
    return {
        "inputs": [_spec(n, t, batched) for n, t in zip(names, inputs, strict=True)],
        "outputs": [_spec(n, t, batched) for n, t in outputs],
    }


def serialise(
    module: Any, example_inputs: Any, fmt: str, directory: Path, *, batched: bool = True
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Write the module under ``directory``: ``(file, signature, metadata)``.

    TorchScript: scripted (control flow kept), traced when scripting fails. torch.export:
    dimension 0 of every input exported as one dynamic batch size; a module that cannot
    take any batch size is exported (and described) with the example's exact shapes."""
    import torch

    if fmt not in FORMATS:
        raise ModelplaneError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    inputs = as_tuple(example_inputs)
    was_training = getattr(module, "training", False)
    module.eval()
    try:
        with torch.no_grad():
            outputs = flatten_outputs(module(*inputs))
        names = input_names(module, len(inputs))
        # the example drives serving's warm-up and deploy-time accuracy checks
        example = {name: tensor for name, tensor in zip(names, inputs, strict=True)}
        meta: dict[str, Any] = {"torch": torch.__version__, "example": encode_example(example)}
        if fmt == "torchscript":
            path = directory / "model.pt"
            meta["serialised_by"] = _save_torchscript(module, inputs, path)
        else:
            path = directory / "model.pt2"
            batched = batched and _save_export(module, inputs, path)
            meta["serialised_by"] = "torch.export"
        return path, signature(names, inputs, outputs, batched), meta
    finally:
        module.train(was_training)


def _save_torchscript(module: Any, inputs: tuple[Any, ...], path: Path) -> str:

    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; serving loads it
        warnings.simplefilter("ignore", DeprecationWarning)
        return _script_or_trace(module, inputs, path)


def _script_or_trace(module: Any, inputs: tuple[Any, ...], path: Path) -> str:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, str(path))
        return "torch.jit.script"
    try:
        scripted = torch.jit.script(module)
        how = "torch.jit.script"
    except Exception:  # scripting refuses much ordinary Python; tracing takes it
        scripted = torch.jit.trace(module, inputs)  # type: ignore[no-untyped-call]
        how = "torch.jit.trace"
    torch.jit.save(scripted, str(path))
    return how


def _save_export(module: Any, inputs: tuple[Any, ...], path: Path) -> bool:
    """``True`` when exported with a dynamic batch dimension."""
    import torch

    # A finite bound: serving takes it as the largest batch (and refuses an unbounded one).
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if all(t.ndim >= 1 for t in inputs):
        # export specialises a size-1 dimension: show it at least two rows
        wide = tuple(t if t.shape[0] > 1 else torch.cat([t, t]) for t in inputs)
        dynamic = tuple({0: batch} for _ in wide)
        try:
            program = torch.export.export(module, wide, dynamic_shapes=dynamic)
            torch.export.save(program, str(path))
            return True
        except Exception:  # noqa: S110 - the module fixes its batch size: export it as is
            pass
    try:
        program = torch.export.export(module, inputs)
    except Exception as exc:
        raise ModelplaneError(f"torch.export cannot export the module: {exc}") from exc
    torch.export.save(program, str(path))
    return False
