"""Language-model serving throughput and latency, side by side with the peer: a random-weight
Llama made here (sharded safetensors) served three ways on the same load, measured in one
run, alternating at each concurrency:

  ours, direct     one `python -m serving` process (format hf_causal_lm, continuous batching);
  ours, platform   the same model pushed to a control plane with auth on and deployed by a
                   worker (`bench/llm_platform.py`), called through the stable URL
                   `/serve/{deployment}/v1` with the key, as users run it;
  peer             `transformers serve --continuous-batching` (the library's own
                   OpenAI-compatible server, paged attention) on the same model directory.

Each gets streamed `/v1/completions`: the same text prompts of `--prompt` tokens, exactly
`--output` new tokens, greedy (ours: `ignore_eos`; the peer: a `generation_config` whose
`eos_token_id` no token has). Only the server being measured runs: the other standalone
server is paused (SIGSTOP) meanwhile. Beside them, in this process, `model.generate` one
request at a time (the baseline) and one batched `generate` of 16 (the ceiling), and the CPU
dtype choice: one decode step in float32 and bfloat16.

    .venv/bin/python -m bench.llm                       # ~86M params, concurrency 1 4 16
    .venv/bin/python -m bench.llm --only ours-direct --hidden 256 --layers 4

Traffic goes to 127.0.0.1 only; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.harness import Process, base_env, free_port, wait_for
from bench.llm_models import make_llama
from bench.llm_platform import folder_settings, llm_platform

TARGETS = ("ours-direct", "ours-platform", "peer")
OURS_EXACT = {"ignore_eos": True}  # vLLM's extension, which ours takes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def text_prompts(directory: Path, length: int, count: int) -> list[str]:
    """Random texts that the model's tokenizer turns into exactly `length` ids (its BOS
    included), found by decoding random ids and re-encoding until the length holds."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    rng = random.Random(0)
    prompts: list[str] = []
    while len(prompts) < count:
        ids = [rng.randrange(10, len(tokenizer)) for _ in range(length + 8)]
        for _ in range(8):
            text = str(tokenizer.decode(ids, skip_special_tokens=True))
            encoded = tokenizer(text)["input_ids"]
            if len(encoded) == length:
                prompts.append(text)
                break
            ids = encoded[1:length]  # without BOS, which the tokenizer puts back
    return prompts


def in_process(directory: Path, prompts: list[list[int]], output: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32
    )  # in eval mode
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


@dataclass
class Target:
    """An OpenAI-compatible server: its `/v1` base, the model name it takes, its headers,
    the body fields that make it generate exactly `max_tokens`, and (for a standalone
    process) the process to pause while the others are measured."""

    base: str
    model: str
    headers: dict[str, str]
    exact: dict[str, Any]
    process: Process | None = None

    def pause(self, paused: bool) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)


async def drive(
    target: Target, prompts: list[str], output: int, concurrency: int
) -> dict[str, float]:
    ttft: list[float] = []
    itl: list[float] = []
    tokens = 0
    prompt_tokens: list[int] = []

    async def one(http: httpx.AsyncClient, prompt: str) -> None:
        nonlocal tokens
        body = {"model": target.model, "prompt": prompt, "max_tokens": output, "stream": True}
        body |= {"temperature": 0, "stream_options": {"include_usage": True}} | target.exact
        started = last = time.perf_counter()
        async with http.stream("POST", "/completions", json=body) as answer:
            assert answer.status_code == 200, await answer.aread()
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                now = time.perf_counter()
                event = orjson.loads(line[6:])
                if event.get("usage"):
                    tokens += event["usage"]["completion_tokens"]
                    prompt_tokens.append(event["usage"]["prompt_tokens"])
                if not any(c.get("text") for c in event.get("choices") or []):
                    continue
                if last == started:
                    ttft.append(now - started)
                else:
                    itl.append(now - last)
                last = now

    requests = max(concurrency, 4 if concurrency == 1 else concurrency)
    async with httpx.AsyncClient(base_url=target.base, headers=target.headers, timeout=900) as http:
        await one(http, prompts[-1])  # warm: the peer sets its batching manager up here
        tokens, prompt_tokens, ttft, itl = 0, [], [], []
        started = time.perf_counter()
        queue = list(prompts[:requests])

        async def worker() -> None:
            while queue:
                await one(http, queue.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    assert tokens == requests * output, f"{tokens} tokens, not {requests} x {output}"
    assert len(set(prompt_tokens)) == 1, f"prompts of {set(prompt_tokens)} tokens"
    return {
        "tok_s": tokens / wall,
        "prompt_tokens": prompt_tokens[0],
        "ttft_p50_ms": percentile(ttft, 0.5) * 1000,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1000,
        "itl_p50_ms": percentile(itl, 0.5) * 1000,
        "itl_p99_ms": percentile(itl, 0.99) * 1000,
    }


def serve_ours(directory: Path, log_dir: Path) -> Target:
    port = free_port()
    args = ["-m", "serving", "--name", "bench", "--format", "hf_causal_lm"]
    args += ["--path", str(directory), "--port", str(port), "--max-batch-size", "16"]
    process = Process(args, log_dir / "ours.log", base_env())
    url = f"http://127.0.0.1:{port}"
    wait_for(
        "our serving process",
        lambda: httpx.get(url + "/v2/health/ready").status_code == 200,
        300,
        process.log,
    )
    return Target(url + "/v1", "bench", {}, OURS_EXACT, process)


def serve_peer(directory: Path, log_dir: Path) -> Target:
    """`transformers serve --continuous-batching` with the model directory forced (loaded
    at start, never unloaded), on the CPU, as the library ships it."""
    port = free_port()
    cli = str(Path(sys.executable).with_name("transformers"))  # a Python script
    args = [cli, "serve", "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1",
            "--port", str(port), str(directory)]  # fmt: skip
    process = Process(args, log_dir / "peer.log", base_env())
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.process.poll() is None, process.log()
        return httpx.get(url + "/health").status_code == 200

    wait_for("transformers serve", ready, 300, process.log)
    # its requests take no ignore_eos: a generation config whose EOS no token is
    exact = {"generation_config": json.dumps({"eos_token_id": -1, "do_sample": False})}
    return Target(url + "/v1", str(directory), {}, exact, process)


@contextlib.contextmanager
def targets(directory: Path, log_dir: Path, only: list[str]) -> Iterator[dict[str, Target]]:
    """The servers asked for, up; all stopped by PID afterwards."""
    out: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:
        if "ours-platform" in only:
            home = log_dir / "home"
            home.mkdir()
            plane = stack.enter_context(llm_platform(log_dir, folder_settings(home)))
            version = plane.push("bench", directory)
            plane.deploy("llm-bench", "bench", version)
            plane.wait_serving("llm-bench")
            out["ours-platform"] = Target(
                plane.stable("llm-bench"), "bench", plane.headers, OURS_EXACT
            )
        for name, start in (("ours-direct", serve_ours), ("peer", serve_peer)):
            if name in only:
                target = start(directory, log_dir)
                assert target.process is not None
                stack.callback(target.process.stop)
                stack.callback(target.pause, False)
                out[name] = target
        yield out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--output", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS))
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # the servers inherit it: nothing from the hub

    with tempfile.TemporaryDirectory() as tmp:
        directory = make_llama(
            Path(tmp) / "llama", hidden=args.hidden, layers=args.layers,
            heads=args.hidden // 64, kv_heads=args.hidden // 64,
            intermediate=args.hidden * 8 // 3, context=2048, shard_size="100MB",
        )  # fmt: skip
        params = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 4 / 1e6
        prompts = text_prompts(directory, args.prompt, 33)
        print(f"random Llama, {params:.0f}M params fp32, hidden {args.hidden}, "
              f"{args.layers} layers; prompt {args.prompt}, output {args.output}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        base = in_process(directory, [tokenizer(p)["input_ids"] for p in prompts], args.output)
        print({k: round(v, 1) for k, v in base.items()}, flush=True)
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        rows: dict[tuple[str, int], dict[str, float]] = {}
        with targets(directory, log_dir, args.only) as servers:
            for target in servers.values():
                target.pause(True)
            for concurrency in args.concurrency:
                for name, target in servers.items():
                    target.pause(False)
                    rows[name, concurrency] = asyncio.run(
                        drive(target, prompts, args.output, concurrency)
                    )
                    target.pause(True)
                    row = rows[name, concurrency]
                    print(f"  {name} at {concurrency}: {row['tok_s']:.1f} tok/s, prompts of "
                          f"{row['prompt_tokens']:.0f} tokens, load {os.getloadavg()[0]:.2f}",
                          flush=True)  # fmt: skip
        report(rows, base, args.concurrency, list(servers))


def report(
    rows: dict[tuple[str, int], dict[str, float]],
    base: dict[str, float],
    concurrencies: list[int],
    names: list[str],
) -> None:
    print("\n| concurrency | server | tok/s | vs sequential | vs batched-16 | vs peer | "
          "TTFT p50/p99 ms | inter-token p50/p99 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in concurrencies:
        peer = rows.get(("peer", concurrency))
        for name in names:
            row = rows[name, concurrency]
            ratio = f"{row['tok_s'] / peer['tok_s']:.2f}x" if peer else "-"
            print(f"| {concurrency} | {name} | {row['tok_s']:.1f} | "
                  f"{row['tok_s'] / base['sequential_tok_s']:.2f}x | "
                  f"{row['tok_s'] / base['batched16_tok_s']:.2f}x | {ratio} | "
                  f"{row['ttft_p50_ms']:.0f}/{row['ttft_p99_ms']:.0f} | "
                  f"{row['itl_p50_ms']:.0f}/{row['itl_p99_ms']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
