"""The SDK's push and pull against plain boto3, side by side, on the same S3 store.

    BENCH_TMP=/tmp .venv/bin/python -m bench.client_push [--size-mib 512] [--rounds 2]

Starts SeaweedFS and a control plane (`modelplane server`, SQLite + s3://, default 64 MiB
multipart threshold and 8 MiB parts) on loopback, then per round, in rotated order:
  (c) boto3 upload_file / download_file straight to SeaweedFS (TransferConfig, 8 threads)
  (s) Client.push(...) of the same file: local sha256, create the version, presigned parts
      PUT by 8 threads, complete (the control plane reads the object back, hashes it and
      copies it to its content-addressed key), finalize; then Client.pull(...) (one stream
      through the control plane, hashed as it arrives)
  (r) Client.push of the same bytes again: everything already stored, nothing uploaded
Every file is new per round (its first 8 bytes are the round number), so deduplication
never skips work in (c) or (s). Medians over rounds; the ratio column is to (c).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from bench._common import ControlPlane
from bench.upload import make_file, make_file_digest, mbps, renew, rotated, warm_up
from client import Client
from devstack.seaweed import SeaweedServer

PARALLEL = 8


def raw(s3: object, file: Path, out: Path) -> dict[str, float]:
    cfg = TransferConfig(max_concurrency=PARALLEL)
    t = time.perf_counter()
    s3.upload_file(str(file), "bench", "raw/" + file.name, Config=cfg)  # type: ignore[attr-defined]
    up = time.perf_counter() - t
    t = time.perf_counter()
    s3.download_file("bench", "raw/" + file.name, str(out), Config=cfg)  # type: ignore[attr-defined]
    return {"raw_up": up, "raw_down": time.perf_counter() - t}


def sdk(client: Client, file: Path, out: Path, n: int) -> dict[str, float]:
    t = time.perf_counter()
    version = client.push("bench", file)
    up = time.perf_counter() - t
    t = time.perf_counter()
    client.pull("bench", version.version, out)
    down = time.perf_counter() - t
    t = time.perf_counter()
    client.push("bench", file)  # the same bytes again: nothing to upload
    return {"sdk_up": up, "sdk_down": down, "sdk_again": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    size = args.size_mib << 20
    results: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_s,
        SeaweedServer() as weed,
    ):
        tmp = Path(tmp_s)
        s3 = weed.client()
        s3.create_bucket(Bucket="bench")
        files = {k: tmp / f"{k}.bin" for k in ("c", "s")}
        for p in files.values():
            make_file(p, size)
        env = {
            "MODELPLANE_HOME": str(tmp),
            "MODELPLANE_AUTH_ENABLED": "false",
            "MODELPLANE_STORAGE_URL": "s3://bench/mp",
            "MODELPLANE_S3_ENDPOINT_URL": weed.endpoint_url,
            "MODELPLANE_S3_ACCESS_KEY_ID": "modelplane",
            "MODELPLANE_S3_SECRET_ACCESS_KEY": "modelplane-secret",
            "MODELPLANE_S3_REGION": "us-east-1",
        }
        cp = ControlPlane(env, log=tmp / "server.log")
        try:
            with Client(cp.url, None, concurrency=PARALLEL, timeout=600) as client:
                warm_up(s3, tmp)
                for n in range(args.rounds):
                    for k in rotated(["c", "s"], n):
                        digest = renew(files[k], n)
                        out = tmp / f"out-{k}"
                        got = raw(s3, files[k], out) if k == "c" else sdk(client, files[k], out, n)
                        pulled = out / files[k].name if out.is_dir() else out
                        assert make_file_digest(pulled) == digest, f"{k}: bytes differ"
                        pulled.unlink()
                        for name, value in got.items():
                            results.setdefault(name, []).append(value)
        finally:
            cp.stop()
    report(size, args.rounds, results)


def report(size: int, rounds: int, results: dict[str, list[float]]) -> None:
    t = {name: statistics.median(values) for name, values in results.items()}
    ru, rd = mbps(size, t["raw_up"]), mbps(size, t["raw_down"])
    su, sd = mbps(size, t["sdk_up"]), mbps(size, t["sdk_down"])
    print(f"{size >> 20} MiB, median of {rounds} rounds (MB/s; ratio to boto3)")
    print(f"{'path':<44}{'up':>10}{'ratio':>8}{'down':>10}{'ratio':>8}")
    print(f"{'(c) boto3 upload_file / download_file':<44}{ru:>10.0f}{1:>8.2f}{rd:>10.0f}{1:>8.2f}")
    row = "(s) Client.push (hash+parts+verify) / pull"
    print(f"{row:<44}{su:>10.0f}{su / ru:>8.2f}{sd:>10.0f}{sd / rd:>8.2f}")
    print(f"(r) Client.push of stored bytes again: {t['sdk_again']:.2f} s (local hashing only)")


if __name__ == "__main__":
    main()
