"""Tiny models the serving tests build and save, each with what the server needs to know."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from serving.artifacts import file_sha256


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(image)).flatten(1))


class TwoInTwoOut(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a + b.float(), b * 2


class Dtypes(nn.Module):
    """BOOL, FP16 and BF16 in, the same kinds out."""

    def forward(self, flags: Tensor, half: Tensor, brain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.logical_not(flags), half * 2, brain * 2


class Text(nn.Module):
    """BYTES in and out through TorchScript's List[str]."""

    def forward(self, texts: list[str]) -> tuple[Tensor, list[str]]:
        lengths = [len(t) for t in texts]
        return torch.tensor(lengths, dtype=torch.int64), [t.upper() for t in texts]


class Slow(nn.Module):
    """Sleeps in forward: pickled whole (only served with --allow-pickle)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(self.seconds)
        return x * 2


@dataclass
class Artifact:
    name: str
    format: str
    path: Path
    module: nn.Module
    signature: dict[str, object] | None = None
    sha256: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        args = ["--name", self.name, "--format", self.format, "--path", str(self.path)]
        if self.signature is not None:
            args += ["--signature", orjson.dumps(self.signature).decode()]
        for digest in self.sha256:
            args += ["--sha256", digest]
        return args


def _spec(name: str, datatype: str, shape: list[int]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _export(module: nn.Module, example: tuple[Tensor, ...], path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    names = list(module.forward.__code__.co_varnames[1 : 1 + len(example)])
    program = torch.export.export(module, example, dynamic_shapes={n: {0: batch} for n in names})
    torch.export.save(program, path)
    return path


def build_artifacts(root: Path) -> dict[str, Artifact]:
    torch.manual_seed(0)
    mlp, cnn = MLP().eval(), SmallCNN().eval()
    torch.jit.save(torch.jit.script(mlp), root / "mlp.pt")
    torch.jit.save(torch.jit.script(TwoInTwoOut()), root / "two.pt")
    torch.jit.save(torch.jit.script(Text()), root / "text.pt")
    torch.save(Slow(1.0), root / "slow.pkl")
    (root / "weights").mkdir()
    torch.jit.save(torch.jit.script(MLP()), root / "weights" / "graph.pt")  # other weights
    save_file(mlp.state_dict(), root / "weights" / "model.safetensors")
    mlp_pt2 = _export(mlp, (torch.zeros(2, 64),), root / "mlp.pt2")
    digests = [f"{p.name}={file_sha256(p)}" for p in sorted((root / "weights").iterdir())]
    mlp_signature = {
        "inputs": [_spec("x", "FP32", [-1, 64])],
        "outputs": [_spec("y", "FP32", [-1, 10])],
    }
    return {
        "mlp_ts": Artifact("mlp", "torchscript", root / "mlp.pt", mlp, mlp_signature),
        "mlp_pt2": Artifact("mlp", "torch_export", mlp_pt2, mlp, sha256=[file_sha256(mlp_pt2)]),
        "cnn": Artifact(
            "cnn", "torch_export", _export(cnn, (torch.zeros(2, 1, 8, 8),), root / "cnn.pt2"), cnn
        ),
        "two": Artifact(
            "two",
            "torchscript",
            root / "two.pt",
            TwoInTwoOut(),
            {
                "inputs": [_spec("a", "FP32", [-1, 4]), _spec("b", "INT64", [-1, 4])],
                "outputs": [_spec("sum", "FP32", [-1, 4]), _spec("double", "INT64", [-1, 4])],
            },
        ),
        "dtypes": Artifact(
            "dtypes",
            "torch_export",
            _export(
                Dtypes(),
                (
                    torch.zeros(2, 3, dtype=torch.bool),
                    torch.zeros(2, 3, dtype=torch.float16),
                    torch.zeros(2, 3, dtype=torch.bfloat16),
                ),
                root / "dtypes.pt2",
            ),
            Dtypes(),
        ),
        "text": Artifact(
            "text",
            "torchscript",
            root / "text.pt",
            Text(),
            {
                "inputs": [_spec("texts", "BYTES", [-1])],
                "outputs": [_spec("lengths", "INT64", [-1]), _spec("upper", "BYTES", [-1])],
            },
        ),
        "weights": Artifact("weights", "safetensors", root / "weights", mlp, None, digests),
        "slow": Artifact(
            "slow",
            "pickle",
            root / "slow.pkl",
            Slow(1.0),
            {"inputs": [_spec("x", "FP32", [-1, 2])], "outputs": [_spec("y", "FP32", [-1, 2])]},
        ),
    }
