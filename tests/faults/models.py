"""Models that misbehave on purpose. A pickled whole module (format ``pickle``, deployed with
``allow_pickle``) names its class, so the serving process imports it from here."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn


class CrashEveryN(nn.Module):
    """y = x + c, and the whole process dies (exit code 3) on every ``n``-th forward call,
    the warm-up call included."""

    def __init__(self, n: int, c: float) -> None:
        super().__init__()
        self.n, self.c, self.calls = n, c, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls % self.n == 0:
            os._exit(3)
        return x + self.c


def pickled_bytes(module: nn.Module, path: Path) -> bytes:
    torch.save(module, path)
    return path.read_bytes()
