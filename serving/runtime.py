"""Moved to `serving.runtimes` (a torch-free base, one module per runtime); these names stay
importable from here. The torch ones import torch only when asked for."""

from typing import Any

from serving.runtimes.base import Runtime, RuntimeOptions, example_input

_TORCH = ("TorchRuntime", "PickleRefused", "pick_device")


def __getattr__(name: str) -> Any:
    if name in _TORCH:
        from serving.runtimes import torch as runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'serving.runtime' has no attribute {name!r}")


__all__ = ["Runtime", "RuntimeOptions", "example_input", *_TORCH]
