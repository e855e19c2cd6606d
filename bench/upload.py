"""Upload and download throughput: control plane (proxied and direct multipart) vs raw boto3.

    BENCH_TMP=/tmp .venv/bin/python -m bench.upload [--size-mib 1024] [--rounds 3]

Starts SeaweedFS and a control plane (`modelplane server`, SQLite + s3://) on loopback and
moves one file of SIZE MiB (random bytes, a different file per path and round so
deduplication can't skip work) three ways, printing MB/s and the ratio to (c):
  (a) proxied: PUT .../files/{path} through the control plane; download via GET .../files/{path}
      (one stream each way, as curl would)
  (b) direct: presigned multipart part URLs, parts PUT in parallel straight to the store,
      then complete (the control plane reads the object back, hashes it and copies it to
      its content-addressed key); download via ?redirect=true and parallel ranged GETs on
      the presigned URL. Timed with and without the complete step.
  (c) plain boto3 upload_file / download_file straight to the same SeaweedFS
and the control plane's peak RSS growth during (a) and (b).

The clients are as even as we can make them: (b) uses one pooled httpx.Client shared by
PARALLEL threads, 8 MiB parts and 8 MiB ranges, as boto3's TransferConfig (8 MiB chunks,
here PARALLEL threads, a connection pool). SeaweedFS gets a warm-up write first (it
allocates volumes on the first writes); each round runs the three paths in a rotated order
and the table shows medians, so one noisy moment on a shared machine moves one sample only.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from boto3.s3.transfer import TransferConfig

from bench._common import ControlPlane, reset_peak_rss, rss_kib
from devstack.seaweed import SeaweedServer

CHUNK = 8 << 20  # boto3's TransferConfig multipart_chunksize
PARALLEL = 8  # boto3's TransferConfig default is 10 threads; both sides use 8 here


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


class Peak:
    """Peak RSS growth of the control plane across one measured step."""

    def __init__(self, cp: ControlPlane) -> None:
        self.pids = cp.pids()

    def __enter__(self) -> Peak:
        self.base = {p: rss_kib(p) for p in self.pids}
        for p in self.pids:
            reset_peak_rss(p)
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_mb = max(rss_kib(p, "VmHWM") - self.base[p] for p in self.pids) / 1024


def new_version(api: httpx.Client, model: str, path: str, size: int, digest: str) -> int:
    body = {"files": [{"path": path, "size": size, "sha256": digest}]}  # bytes, not a model
    r = api.post(f"/models/{model}/versions", json=body)
    r.raise_for_status()
    return int(r.json()["version"])


def proxied(
    api: httpx.Client, file: Path, size: int, digest: str, out: Path
) -> tuple[float, float]:
    v = new_version(api, "bench", file.name, size, digest)
    t = time.perf_counter()
    r = api.put(
        f"/models/bench/versions/{v}/files/{file.name}",
        content=read_chunks(file),
        headers={"content-length": str(size)},
    )
    r.raise_for_status()
    up = time.perf_counter() - t
    api.post(f"/models/bench/versions/{v}/finalize").raise_for_status()
    t = time.perf_counter()
    with (
        api.stream("GET", f"/models/bench/versions/{v}/files/{file.name}") as resp,
        out.open("wb") as f,
    ):
        resp.raise_for_status()
        for block in resp.iter_raw():
            f.write(block)
    down = time.perf_counter() - t
    return up, down


def direct(
    api: httpx.Client, store: httpx.Client, file: Path, size: int, digest: str, out: Path
) -> tuple[float, float, float]:
    """Parts go out through ``store``, one pooled client shared by the threads (what a real
    client does; boto3 keeps a connection pool too), each part read with one pread."""
    v = new_version(api, "bench", file.name, size, digest)
    base = f"/models/bench/versions/{v}/files/{file.name}/multipart"
    t = time.perf_counter()
    plan = api.post(base).json()
    part_size = int(plan["part_size"])
    fd = os.open(file, os.O_RDONLY)

    def put_part(part: dict[str, object]) -> dict[str, object]:
        n = int(part["part_number"])  # type: ignore[arg-type]
        data = os.pread(fd, part_size, (n - 1) * part_size)
        r = store.put(str(part["url"]), content=data)
        r.raise_for_status()
        return {"part_number": n, "etag": r.headers["etag"]}

    try:
        with cf.ThreadPoolExecutor(PARALLEL) as pool:
            done = list(pool.map(put_part, plan["parts"]))
    finally:
        os.close(fd)
    sent = time.perf_counter() - t
    r = api.post(f"{base}/complete", json={"upload_id": plan["upload_id"], "parts": done})
    r.raise_for_status()
    up = time.perf_counter() - t
    api.post(f"/models/bench/versions/{v}/finalize").raise_for_status()
    t = time.perf_counter()
    loc = api.get(f"/models/bench/versions/{v}/files/{file.name}", params={"redirect": "true"})
    ranged_download(store, loc.headers["location"], size, out)
    return sent, up, time.perf_counter() - t


def ranged_download(store: httpx.Client, url: str, size: int, out: Path) -> None:
    """CHUNK-sized ranged GETs, PARALLEL at a time, as boto3's download_file does."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def get(start: int) -> None:
        end = min(start + CHUNK, size) - 1
        with store.stream("GET", url, headers={"range": f"bytes={start}-{end}"}) as r:
            r.raise_for_status()
            offset = start
            for block in r.iter_raw():
                view = memoryview(block)
                while view:
                    written = os.pwrite(fd, view, offset)
                    offset, view = offset + written, view[written:]

    try:
        os.ftruncate(fd, size)
        with cf.ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(get, range(0, size, CHUNK)))
    finally:
        os.close(fd)


def raw_boto3(s3: object, bucket: str, file: Path, out: Path) -> tuple[float, float]:
    cfg = TransferConfig(max_concurrency=PARALLEL)
    t = time.perf_counter()
    s3.upload_file(str(file), bucket, "raw/" + file.name, Config=cfg)  # type: ignore[attr-defined]
    up = time.perf_counter() - t
    t = time.perf_counter()
    s3.download_file(bucket, "raw/" + file.name, str(out), Config=cfg)  # type: ignore[attr-defined]
    return up, time.perf_counter() - t


def renew(path: Path, round_no: int) -> str:
    """A new digest for the same file (its first 8 bytes are the round number), so a round
    never finds its bytes already stored; returns the new sha256."""
    with path.open("r+b") as f:
        f.write(round_no.to_bytes(8, "big"))
    return make_file_digest(path)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds (paths in rotated order); medians reported"
    )
    args = ap.parse_args()
    size = args.size_mib << 20
    with (
        tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_s,
        SeaweedServer() as weed,
    ):
        tmp = Path(tmp_s)
        s3 = weed.client()
        s3.create_bucket(Bucket="bench")
        files = {k: tmp / f"{k}.bin" for k in ("a", "b", "c")}
        for p in files.values():
            make_file(p, size)
        env = {
            "MODELPLANE_HOME": str(tmp),
            "MODELPLANE_STORAGE_URL": "s3://bench/mp",
            "MODELPLANE_S3_ENDPOINT_URL": weed.endpoint_url,
            "MODELPLANE_S3_ACCESS_KEY_ID": "modelplane",
            "MODELPLANE_S3_SECRET_ACCESS_KEY": "modelplane-secret",
            "MODELPLANE_S3_REGION": "us-east-1",
            "MODELPLANE_MAX_UPLOAD_BYTES": str(size * 4),
        }
        results: dict[str, list[float]] = {}
        cp = ControlPlane(env, log=tmp / "server.log")
        try:
            with (
                httpx.Client(base_url=f"{cp.url}/api/v1", timeout=600, headers=cp.headers) as api,
                httpx.Client(timeout=120, limits=httpx.Limits(max_connections=PARALLEL)) as store,
            ):
                api.post("/models", json={"name": "bench"}).raise_for_status()
                warm_up(s3, tmp)
                for n in range(args.rounds):
                    for k in rotated(["c", "a", "b"], n):
                        digest = renew(files[k], n)
                        out = tmp / f"{k}.out"
                        got = run_path(k, cp, api, store, s3, files[k], size, digest, out)
                        assert make_file_digest(out) == digest, f"{k}: bytes differ"
                        out.unlink()
                        for name, value in got.items():
                            results.setdefault(name, []).append(value)
        finally:
            cp.stop()
        report(size, args.rounds, results)


def run_path(
    k: str,
    cp: ControlPlane,
    api: httpx.Client,
    store: httpx.Client,
    s3: object,
    file: Path,
    size: int,
    digest: str,
    out: Path,
) -> dict[str, float]:
    """One path's timings (seconds) and, for the control plane's paths, its RSS growth."""
    if k == "c":
        up, down = raw_boto3(s3, "bench", file, out)
        return {"raw_up": up, "raw_down": down}
    with Peak(cp) as peak:
        if k == "a":
            up, down = proxied(api, file, size, digest, out)
            got = {"a_up": up, "a_down": down}
        else:
            sent, up, down = direct(api, store, file, size, digest, out)
            got = {"b_sent": sent, "b_up": up, "b_down": down}
    return {**got, f"{k}_rss": peak.growth_mb}


def rotated(items: list[str], n: int) -> list[str]:
    n %= len(items)
    return items[n:] + items[:n]


def warm_up(s3: object, tmp: Path) -> None:
    """SeaweedFS allocates volumes on the first writes: pay that before anything is timed."""
    warm = tmp / "warm.bin"
    make_file(warm, 64 << 20)
    raw_boto3(s3, "bench", warm, tmp / "warm.out")
    warm.unlink()
    (tmp / "warm.out").unlink()


def make_file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for block in read_chunks(path):
        h.update(block)
    return h.hexdigest()


def report(size: int, rounds: int, results: dict[str, list[float]]) -> None:
    """Medians over the rounds (each path's seconds, then MB/s), ratios to raw boto3."""
    t = {name: median(values) for name, values in results.items()}
    ru, rd = mbps(size, t["raw_up"]), mbps(size, t["raw_down"])
    rows = [
        ("(c) raw boto3", ru, rd),
        ("(a) proxied", mbps(size, t["a_up"]), mbps(size, t["a_down"])),
        ("(b) direct, parts only", mbps(size, t["b_sent"]), mbps(size, t["b_down"])),
        ("(b) direct, + verify", mbps(size, t["b_up"]), mbps(size, t["b_down"])),
    ]
    print(
        f"{size >> 20} MiB, SeaweedFS on loopback, {PARALLEL} parallel streams where parallel, "
        f"median of {rounds} round(s)"
    )
    print(f"{'path':<24} {'up MB/s':>9} {'x raw':>6} {'down MB/s':>10} {'x raw':>6}")
    for name, up, down in rows:
        print(f"{name:<24} {up:>9.0f} {up / ru:>6.2f} {down:>10.0f} {down / rd:>6.2f}")
    print("per round, MB/s up/down:")
    for key, label in (("raw", "c"), ("a", "a"), ("b", "b")):
        ups = results[f"{key}_up" if key != "b" else "b_sent"]
        downs = results[f"{key}_down"]
        print(
            f"  ({label}) "
            + "  ".join(
                f"{mbps(size, u):.0f}/{mbps(size, d):.0f}" for u, d in zip(ups, downs, strict=True)
            )
        )
    print(
        f"control-plane peak RSS growth (max over rounds): proxied {max(results['a_rss']):.0f} MB, "
        f"direct {max(results['b_rss']):.0f} MB (target < 100 MB)"
    )
    print("targets: (b) >= 0.95x raw; (a) >= 0.8x raw")


if __name__ == "__main__":
    main()
