"""Language-model cold start: `POST /deployments` → first streamed token through the stable
URL, for a ~0.5B-parameter random Llama (bfloat16 safetensors, ~1 GB, 3+ shards), next to
what one process would do by hand with the same store.

    .venv/bin/python -m bench.llm_cold [--layers 40 --hidden 1024] [--rounds 2]

Real processes on loopback: SeaweedFS (S3), a control plane with auth on (SQLite, artifacts
on s3://), one deployer worker with one CPU slot (`bench/llm_platform.py`). The model is
made once and cached under bench/out/, pushed with the SDK (multipart, in parallel).

Each round, in this order:
  baseline   in a new process that has imported torch, transformers and boto3 before the
             clock starts (as the worker's warm spare has imported torch): boto3 downloads
             of every file of the version from SeaweedFS in parallel (one thread per file)
             into a temp dir, `from_pretrained` from there (float32, what the runtime loads
             on CPU) and the tokenizer, one generated token;
  cold       a new worker with an empty cache: POST /deployments, then a streamed
             completion through `/serve/{name}/v1` every 10 ms until one streams its first
             token;
  local      the same new-process measure without the download: `from_pretrained` +
             tokenizer + one token from the baseline's local copy;
  cache-hit  the deployment deleted (its process gone), a new one of the same version on
             the same worker (files cached): POST → first streamed token again.
Phases come from the deployment's events. Medians over the rounds; the machine is shared,
so compare within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.llm_models import make_llama
from bench.llm_platform import LlmPlatform, llm_platform
from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SeaweedServer
from storage.base import blob_key

OUT = Path(__file__).resolve().parent / "out"
MODEL = "big-llama"
PREFIX = "mp"


def model_dir(hidden: int, layers: int) -> Path:
    """The random Llama (made once, cached under bench/out/): bf16, shards of ≤ 400 MB."""
    directory = OUT / f"llm-cold-{hidden}x{layers}"
    if not (directory / "model.safetensors.index.json").exists():
        print(f"making {directory.name} ...", flush=True)
        make_llama(
            directory, hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=hidden // 64,
            intermediate=hidden * 11 // 4, context=2048, shard_size="400MB", dtype="bfloat16",
        )  # fmt: skip
    return directory


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def first_token_in_process(directory: Path) -> tuple[float, float]:
    """Seconds for `from_pretrained` (float32) + tokenizer, then for one greedy token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32
    )  # in eval mode
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    loaded = time.perf_counter()
    with torch.inference_mode():
        ids = tokenizer("hello world", return_tensors="pt")["input_ids"]
        model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
    return loaded - started, time.perf_counter() - loaded


def by_hand(job: dict[str, Any]) -> dict[str, float]:
    """What one process does by hand, in this (new) process, timed after the imports:
    parallel boto3 downloads of `job["files"]` (path → sha256) into `job["target"]` when
    `job["endpoint"]` is set, then the model loaded from there to its first token."""
    started = time.perf_counter()
    import boto3
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    imports = time.perf_counter() - started
    torch.set_num_threads(os.cpu_count() or 1)  # as the runtime does for a language model
    target = Path(job["target"])
    started = time.perf_counter()
    if job.get("endpoint"):
        s3 = boto3.session.Session().client(
            "s3", endpoint_url=job["endpoint"], region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
        )  # fmt: skip

        def get(item: tuple[str, str]) -> None:
            key = f"{PREFIX}/{blob_key(item[1])}"
            s3.download_file(job["bucket"], key, str(target / item[0]))

        with ThreadPoolExecutor(len(job["files"])) as pool:
            list(pool.map(get, job["files"].items()))
    downloaded = time.perf_counter() - started
    loaded, token = first_token_in_process(target)
    return {
        "imports": imports,
        "download": downloaded,
        "load": loaded,
        "token": token,
        "load+token": loaded + token,
        "total": downloaded + loaded + token,
    }


def in_new_process(job: dict[str, Any]) -> dict[str, float]:
    answer = subprocess.run(
        [sys.executable, "-m", "bench.llm_cold", "--by-hand", orjson.dumps(job).decode()],
        capture_output=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    result: dict[str, float] = orjson.loads(answer.stdout.splitlines()[-1])
    return result


def deploy_to_first_token(platform: LlmPlatform, name: str, version: int) -> dict[str, float]:
    """POST /deployments → the first streamed chunk through the stable URL."""
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 2, "stream": True}
    body["ignore_eos"] = True
    url = platform.stable(name) + "/completions"
    with httpx.Client(headers=platform.headers, timeout=120) as http:
        started = time.perf_counter()
        posted = platform.deploy(name, MODEL, version)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            with http.stream("POST", url, json=body) as answer:
                if answer.status_code == 200:
                    lines = (line for line in answer.iter_lines() if line.startswith("data: {"))
                    if orjson.loads(next(lines)[6:]).get("choices"):
                        took = time.perf_counter() - started
                        break
            time.sleep(0.01)
        else:
            raise AssertionError(f"{name}: no token in 900 s\n{platform.logs()}")
    return {"total": took, **platform.phases(name, posted)}


def median(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=8.0)
    parser.add_argument("--by-hand", help=argparse.SUPPRESS)  # the baselines' new process
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.by_hand:
        print(orjson.dumps(by_hand(orjson.loads(args.by_hand))).decode())
        return
    directory = model_dir(args.hidden, args.layers)
    files = {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}
    shards = [f for f in files if f.endswith(".safetensors")]
    weights = sum((directory / f).stat().st_size for f in shards)
    config = orjson.loads((directory / "config.json").read_bytes())
    print(f"random Llama, {weights / 2 / 1e9:.2f}B params bf16, {weights / 1e9:.2f} GB in "
          f"{len(shards)} shards, hidden {config['hidden_size']}, "
          f"{config['num_hidden_layers']} layers", flush=True)  # fmt: skip
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in ("baseline", "cold", "hit", "local")}
    with tempfile.TemporaryDirectory(prefix="mp-llm-cold-") as tmp, SeaweedServer() as seaweed:
        s3 = seaweed.client()
        bucket = "llm-cold"
        s3.create_bucket(Bucket=bucket)
        settings = {
            "MODELPLANE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/registry.db",
            "MODELPLANE_STORAGE_URL": f"s3://{bucket}/{PREFIX}",
            "MODELPLANE_S3_ENDPOINT_URL": seaweed.endpoint_url,
            "MODELPLANE_S3_REGION": REGION,
            "MODELPLANE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "MODELPLANE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }
        with llm_platform(Path(tmp), settings) as platform:
            started = time.perf_counter()
            version = platform.push(MODEL, directory)
            print(f"pushed in {time.perf_counter() - started:.1f} s", flush=True)
            for i in range(args.rounds):
                local = Path(tmp) / f"baseline-{i}"
                local.mkdir()
                job = {"target": str(local), "files": files, "bucket": bucket}
                rows["baseline"].append(in_new_process(job | {"endpoint": seaweed.endpoint_url}))
                platform.fresh_worker(args.settle_s)
                rows["cold"].append(deploy_to_first_token(platform, f"cold-{i}", version))
                platform.delete(f"cold-{i}")
                rows["local"].append(in_new_process(job))
                time.sleep(args.settle_s)
                rows["hit"].append(deploy_to_first_token(platform, f"hit-{i}", version))
                platform.delete(f"hit-{i}")
                print(f"  round {i + 1}: baseline {rows['baseline'][-1]['total']:.2f} s, "
                      f"cold {rows['cold'][-1]['total']:.2f} s, from_pretrained "
                      f"{rows['local'][-1]['total']:.2f} s, cache hit "
                      f"{rows['hit'][-1]['total']:.2f} s; load {os.getloadavg()[0]:.2f}",
                      flush=True)  # fmt: skip
    report(rows)


def report(rows: dict[str, list[dict[str, float]]]) -> None:
    base, local = median(rows["baseline"], "total"), median(rows["local"], "total")
    cold, hit = median(rows["cold"], "total"), median(rows["hit"], "total")
    print(f"\n{len(rows['cold'])} rounds, medians, seconds")
    print(f"baseline: parallel S3 download {median(rows['baseline'], 'download'):.2f} + "
          f"from_pretrained to 1st token {median(rows['baseline'], 'load+token'):.2f} "
          f"= {base:.2f}")  # fmt: skip
    print(f"deploy, empty cache: POST -> 1st streamed token {cold:.2f} "
          f"({cold - base:+.2f} vs baseline; target <= +1 s)")  # fmt: skip
    print(f"from_pretrained from local disk {median(rows['local'], 'load'):.2f} + 1st token "
          f"{median(rows['local'], 'token'):.2f} = {local:.2f} (imports before the clock: "
          f"{median(rows['local'], 'imports'):.2f})")  # fmt: skip
    print(f"redeploy, cache hit: POST -> 1st streamed token {hit:.2f} "
          f"({hit - local:+.2f} vs from_pretrained; target <= +1 s)")  # fmt: skip
    for kind in ("cold", "hit"):
        names = ("claimed", "pulling", "loading", "warming", "ready")
        shown = ", ".join(
            f"{p} +{median(rows[kind], p):.2f}" for p in names if any(p in r for r in rows[kind])
        )
        print(f"  {kind} phases (s after POST): {shown}")


if __name__ == "__main__":
    main()
