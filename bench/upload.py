"""Upload and download throughput: control plane (proxied and direct multipart) vs raw boto3.

    .venv/bin/python bench/upload.py [--size-mib 1024]

Starts SeaweedFS and a control plane (`modelplane server`, SQLite + s3://) on loopback and
moves one file of SIZE MiB (random bytes, a different file per path so deduplication can't
skip work) three ways, printing MB/s and the ratio to (c):
  (a) proxied: PUT .../files/{path} through the control plane; download via GET .../files/{path}
  (b) direct: presigned multipart part URLs, parts PUT in parallel straight to the store,
      then complete (the control plane reads the object back and hashes it); download via
      ?redirect=true and parallel ranged GETs on the presigned URL
  (c) plain boto3 upload_file / download_file straight to the same SeaweedFS
and the control plane's peak RSS growth during (a) and (b).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from boto3.s3.transfer import TransferConfig

from bench._common import ControlPlane, reset_peak_rss, rss_kib
from tests.support.seaweed import SeaweedServer

CHUNK = 8 << 20
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
    body = {"files": [{"path": path, "size": size, "sha256": digest}], "format": "torchscript"}
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
        for block in resp.iter_bytes(CHUNK):
            f.write(block)
    down = time.perf_counter() - t
    return up, down


def direct(
    api: httpx.Client, file: Path, size: int, digest: str, out: Path
) -> tuple[float, float, float]:
    v = new_version(api, "bench", file.name, size, digest)
    base = f"/models/bench/versions/{v}/files/{file.name}/multipart"
    t = time.perf_counter()
    plan = api.post(base).json()
    part_size = int(plan["part_size"])

    def put_part(part: dict[str, object]) -> dict[str, object]:
        n = int(part["part_number"])  # type: ignore[arg-type]
        with file.open("rb") as f:
            f.seek((n - 1) * part_size)
            data = f.read(part_size)
        r = httpx.put(str(part["url"]), content=data, timeout=120)
        r.raise_for_status()
        return {"part_number": n, "etag": r.headers["etag"]}

    with cf.ThreadPoolExecutor(PARALLEL) as pool:
        done = list(pool.map(put_part, plan["parts"]))
    sent = time.perf_counter() - t
    r = api.post(f"{base}/complete", json={"upload_id": plan["upload_id"], "parts": done})
    r.raise_for_status()
    up = time.perf_counter() - t
    api.post(f"/models/bench/versions/{v}/finalize").raise_for_status()
    t = time.perf_counter()
    loc = api.get(f"/models/bench/versions/{v}/files/{file.name}", params={"redirect": "true"})
    url = loc.headers["location"]
    ranged_download(url, size, out)
    return sent, up, time.perf_counter() - t


def ranged_download(url: str, size: int, out: Path) -> None:
    with out.open("wb") as f:
        f.truncate(size)

    def get(start: int) -> None:
        end = min(start + CHUNK, size) - 1
        r = httpx.get(url, headers={"range": f"bytes={start}-{end}"}, timeout=120)
        r.raise_for_status()
        with out.open("r+b") as f:
            f.seek(start)
            f.write(r.content)

    with cf.ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(get, range(0, size, CHUNK)))


def raw_boto3(s3: object, bucket: str, file: Path, out: Path) -> tuple[float, float]:
    cfg = TransferConfig(max_concurrency=PARALLEL)
    t = time.perf_counter()
    s3.upload_file(str(file), bucket, "raw/" + file.name, Config=cfg)  # type: ignore[attr-defined]
    up = time.perf_counter() - t
    t = time.perf_counter()
    s3.download_file(bucket, "raw/" + file.name, str(out), Config=cfg)  # type: ignore[attr-defined]
    return up, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
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
        digests = {k: make_file(p, size) for k, p in files.items()}
        env = {
            "MODELPLANE_HOME": str(tmp),
            "MODELPLANE_STORAGE_URL": "s3://bench/mp",
            "MODELPLANE_S3_ENDPOINT_URL": weed.endpoint_url,
            "MODELPLANE_S3_ACCESS_KEY_ID": "modelplane",
            "MODELPLANE_S3_SECRET_ACCESS_KEY": "modelplane-secret",
            "MODELPLANE_S3_REGION": "us-east-1",
            "MODELPLANE_MAX_UPLOAD_BYTES": str(size * 4),
        }
        cp = ControlPlane(env, log=tmp / "server.log")
        try:
            with httpx.Client(base_url=f"{cp.url}/api/v1", timeout=600) as api:
                api.post("/models", json={"name": "bench"}).raise_for_status()
                raw_up, raw_down = raw_boto3(s3, "bench", files["c"], tmp / "c.out")
                with Peak(cp) as pa:
                    a_up, a_down = proxied(api, files["a"], size, digests["a"], tmp / "a.out")
                with Peak(cp) as pb:
                    b_sent, b_up, b_down = direct(
                        api, files["b"], size, digests["b"], tmp / "b.out"
                    )
        finally:
            cp.stop()
        for k in ("a", "b"):
            assert make_file_digest(tmp / f"{k}.out") == digests[k], f"{k}: bytes differ"
        report(
            size, raw_up, raw_down, a_up, a_down, b_sent, b_up, b_down, pa.growth_mb, pb.growth_mb
        )


def make_file_digest(path: Path) -> str:
    h = hashlib.sha256()
    for block in read_chunks(path):
        h.update(block)
    return h.hexdigest()


def report(
    size: int,
    raw_up: float,
    raw_down: float,
    a_up: float,
    a_down: float,
    b_sent: float,
    b_up: float,
    b_down: float,
    a_rss: float,
    b_rss: float,
) -> None:
    ru, rd = mbps(size, raw_up), mbps(size, raw_down)
    rows = [
        ("(c) raw boto3", ru, rd),
        ("(a) proxied", mbps(size, a_up), mbps(size, a_down)),
        ("(b) direct, parts only", mbps(size, b_sent), mbps(size, b_down)),
        ("(b) direct, + verify", mbps(size, b_up), mbps(size, b_down)),
    ]
    print(f"{size >> 20} MiB, SeaweedFS on loopback, {PARALLEL} parallel streams where parallel")
    print(f"{'path':<24} {'up MB/s':>9} {'x raw':>6} {'down MB/s':>10} {'x raw':>6}")
    for name, up, down in rows:
        print(f"{name:<24} {up:>9.0f} {up / ru:>6.2f} {down:>10.0f} {down / rd:>6.2f}")
    print(
        f"control-plane peak RSS growth: proxied {a_rss:.0f} MB, direct {b_rss:.0f} MB "
        f"(target < 100 MB)"
    )
    print("targets: (b) >= 0.95x raw; (a) >= 0.8x raw")


if __name__ == "__main__":
    main()
