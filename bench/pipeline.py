"""Pipeline benchmark: a 32×32 PNG through the image pipeline vs the same tensor sent directly.

Builds a CIFAR-10-shaped CNN (3×32×32 → two convs → 10 classes) as TorchScript with a
signature, an image pipeline (normalise; softmax, top-3 with ten class names) and serves it
with `python -m serving` on a free loopback port. Then, in one run and interleaved call by
call (so the machine's other tenants weigh on both alike):

- over HTTP, one client on a keep-alive connection: v2 infer with the PNG as a binary BYTES
  element, against v2 infer with the decoded [1, 3, 32, 32] FP32 tensor as binary data (the
  pipeline's output steps run on both); the p50 difference is what the image costs;
- in-process: `Pipeline.prepare` on the PNG (decode, normalise, to CHW) alone.

Prints p50/p99 of each and the per-image pipeline cost at p50 (target: < 0.3 ms).

    .venv/bin/python -m bench.pipeline                    # 3,000 calls of each kind
    .venv/bin/python -m bench.pipeline --calls 10000 --batch 8

(`-m`, from the repository root: run as a script, `bench/` would shadow stdlib modules.)

`tests/serving/test_pipeline.py` and the stable-URL test build their classifier here.
"""

from __future__ import annotations

import argparse
import http.client
import io
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]
SIGNATURE = {
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
}
PIPELINE: dict[str, Any] = {
    "input": [{"type": "image", "resize": 32, "crop": 32, "mean": MEAN, "std": STD}],
    "output": [{"type": "softmax"}, {"type": "topk", "k": 3}],
}


class CifarCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, image: Tensor) -> Tensor:
        logits: Tensor = self.head(self.features(image).flatten(1))
        return logits


def save_classifier(directory: Path, pipeline: dict[str, Any] | None = None) -> nn.Module:
    """A version's files in `directory`: `model.pt`, `pipeline.json`, `labels.txt`."""
    torch.manual_seed(0)
    module = CifarCNN().eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module), directory / "model.pt")
    (directory / "pipeline.json").write_bytes(orjson.dumps(pipeline or PIPELINE))
    (directory / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return module


def png(pixels: np.ndarray[Any, Any]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def normalise(pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What the pipeline makes of HWC uint8 pixels: [1, 3, H, W] float32."""
    scaled = pixels.astype(np.float32) / 255
    values = (scaled - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1)[None], dtype=np.float32)


def v2_body(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return header + raw, len(header)


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def timed_post(connection: http.client.HTTPConnection, body: bytes, header: int) -> float:
    headers = {"Inference-Header-Content-Length": str(header)}
    started = time.perf_counter()
    connection.request("POST", "/v2/models/cifar/infer", body=body, headers=headers)
    answer = connection.getresponse()
    answer.read()
    elapsed = time.perf_counter() - started
    if answer.status != 200:
        raise RuntimeError(f"infer answered {answer.status}")
    return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(directory: Path, port: int) -> subprocess.Popen[bytes]:
    args = ["--name", "cifar", "--format", "torchscript", "--path", str(directory)]
    args += ["--signature", orjson.dumps(SIGNATURE).decode(), "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", *args], cwd=REPO, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serving exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise TimeoutError("serving not ready in 90 s")


def in_process(directory: Path, image: bytes, batch: int, calls: int) -> list[float]:
    from serving.pipeline import load_pipeline
    from serving.protocols.v2 import RequestInput, TensorSpec

    pipeline = load_pipeline(directory)
    assert pipeline is not None
    pipeline.bind([TensorSpec("image", "FP32", [-1, 3, 32, 32])], [])
    data = np.empty(batch, dtype=object)
    data[:] = [image] * batch
    items = [RequestInput("image", "BYTES", (batch,), data)]
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        pipeline.prepare(items)
        timings.append(time.perf_counter() - started)
    return timings


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls of each kind")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    args = parser.parse_args()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = png(pixels)
    tensor = np.repeat(normalise(pixels), args.batch, axis=0)
    png_body = v2_body("image", "BYTES", [args.batch], bytes_elements([image] * args.batch))
    tensor_body = v2_body("image", "FP32", list(tensor.shape), tensor.tobytes())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "cifar"
        save_classifier(directory)
        port = free_port()
        process = serve(directory, port)
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(200):  # warm-up, unreported
                timed_post(connection, *png_body)
                timed_post(connection, *tensor_body)
            through, direct = [], []
            for _ in range(args.calls):
                through.append(timed_post(connection, *png_body))
                direct.append(timed_post(connection, *tensor_body))
            connection.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        prepare = in_process(directory, image, args.batch, args.calls)
    # Paired: each PNG call against the tensor call right after it, so a burst of the
    # machine's other work weighs on both sides of a difference.
    cost = pct([t - d for t, d in zip(through, direct, strict=True)], 50) / args.batch
    print(f"{args.calls} calls each, {args.batch} image(s) of 32x32 per call, {len(image)} B PNG")
    print("| path | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    print(
        f"| v2 infer, PNG as BYTES (pipeline) | {pct(through, 50):.3f} | {pct(through, 99):.3f} |"
    )
    print(f"| v2 infer, FP32 tensor (direct) | {pct(direct, 50):.3f} | {pct(direct, 99):.3f} |")
    print(f"| in-process Pipeline.prepare | {pct(prepare, 50):.3f} | {pct(prepare, 99):.3f} |")
    verdict = "meets" if cost < 0.3 else "misses"
    print(f"pipeline cost per image, p50 of paired differences: {cost:.3f} ms over HTTP "
          f"({verdict} < 0.3 ms), {pct(prepare, 50) / args.batch:.3f} ms in-process")  # fmt: skip


if __name__ == "__main__":
    main()
