"""Language-model serving throughput and latency: a random-weight Llama made here (sharded
safetensors), served by one `python -m serving` process (format hf_causal_lm, continuous
batching), driven with streamed `/v1/completions` (prompt of `--prompt` random token ids,
exactly `--output` tokens: `ignore_eos`) at each concurrency; beside it, in this process,
`model.generate` one request at a time (the baseline) and one batched `generate` of 16 (the
ceiling). Also the CPU dtype choice: one decode step in float32 and bfloat16.

    .venv/bin/python -m bench.llm                       # ~86M params, concurrency 1 4 16
    .venv/bin/python -m bench.llm --hidden 256 --layers 4 --concurrency 1 4

Traffic goes to 127.0.0.1 only; the server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench._common import ROOT, free_port
from bench.llm_models import make_llama


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def in_process(directory: Path, prompts: list[list[int]], output: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    out: dict[str, float] = {}
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm
        started = time.perf_counter()
        for _ in range(3):
            model(ids, logits_to_keep=1)
        out["prefill_ms"] = (time.perf_counter() - started) / 3 * 1000
        started = time.perf_counter()
        runs = 3
        for prompt in prompts[:runs]:
            kw: dict[str, Any] = {"max_new_tokens": output, "min_new_tokens": output}
            model.generate(torch.tensor([prompt]), do_sample=False, **kw)
        out["sequential_tok_s"] = runs * output / (time.perf_counter() - started)
        batch = torch.tensor(prompts[:16])
        started = time.perf_counter()
        model.generate(batch, max_new_tokens=output, min_new_tokens=output, do_sample=False)
        out["batched16_tok_s"] = 16 * output / (time.perf_counter() - started)
        for dtype in (torch.float32, torch.bfloat16):
            model = model.to(dtype)
            cache = model(ids, use_cache=True).past_key_values
            step = torch.tensor([[1]])
            started = time.perf_counter()
            for _ in range(10):
                model(step, past_key_values=cache, use_cache=True)
                cache.crop(-1)
            out[f"decode_step_ms_{str(dtype)[6:]}"] = (time.perf_counter() - started) * 100
    return out


async def drive(
    url: str, prompts: list[list[int]], output: int, concurrency: int
) -> dict[str, float]:
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0

    async def one(http: httpx.AsyncClient, prompt: list[int]) -> None:
        nonlocal tokens
        body = {"model": "bench", "prompt": prompt, "max_tokens": output, "stream": True}
        body |= {"temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
        started = last = time.perf_counter()
        async with http.stream("POST", "/v1/completions", json=body) as answer:
            assert answer.status_code == 200, await answer.aread()
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                now = time.perf_counter()
                event = orjson.loads(line[6:])
                if event.get("usage"):
                    tokens += event["usage"]["completion_tokens"]
                    continue
                if last == started:
                    ttft.append(now - started)
                else:
                    itl.append(now - last)
                last = now

    requests = max(concurrency, 4 if concurrency == 1 else concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        queue = list(prompts[:requests])

        async def worker() -> None:
            while queue:
                await one(http, queue.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "tok_s": tokens / wall,
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "itl_p50_ms": percentile(itl, 0.5) * 1000,
        "itl_p99_ms": percentile(itl, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--output", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import random

    with tempfile.TemporaryDirectory() as tmp:
        directory = make_llama(
            Path(tmp) / "llama", hidden=args.hidden, layers=args.layers,
            heads=args.hidden // 64, kv_heads=args.hidden // 64,
            intermediate=args.hidden * 8 // 3, context=2048, shard_size="100MB",
        )  # fmt: skip
        params = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 4 / 1e6
        rng = random.Random(0)
        vocab = orjson.loads((directory / "config.json").read_bytes())["vocab_size"]
        prompts = [[rng.randrange(10, vocab) for _ in range(args.prompt)] for _ in range(32)]
        print(f"random Llama, {params:.0f}M params fp32, hidden {args.hidden}, "
              f"{args.layers} layers; prompt {args.prompt}, output {args.output}")  # fmt: skip
        base = in_process(directory, prompts, args.output)
        print({k: round(v, 1) for k, v in base.items()})
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--name", "bench", "--format", "hf_causal_lm",
             "--path", str(directory), "--port", str(port), "--max-batch-size", "16"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            print("| concurrency | tok/s | vs sequential | vs batched-16 | TTFT p50/p99 ms | "
                  "inter-token p50/p99 ms |\n|---|---|---|---|---|---|")  # fmt: skip
            for concurrency in args.concurrency:
                row = asyncio.run(drive(url, prompts, args.output, concurrency))
                print(f"| {concurrency} | {row['tok_s']:.1f} | "
                      f"{row['tok_s'] / base['sequential_tok_s']:.2f}x | "
                      f"{row['tok_s'] / base['batched16_tok_s']:.2f}x | "
                      f"{row['ttft_p50_ms']:.0f}/{row['ttft_p99_ms']:.0f} | "
                      f"{row['itl_p50_ms']:.0f}/{row['itl_p99_ms']:.0f} |")  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
