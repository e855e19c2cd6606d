"""A large push over presigned multipart (SeaweedFS S3), interrupted after a few parts and
resumed by the next push, which sends only the parts the store lacks."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench.harness import REPO, base_env, wait_for
from client import TransferEvent
from contract.schemas import VersionStatus
from tests.client.conftest import PART_SIZE, S3Plane, unique

SIZE = 30 * 2**20 + 12345  # 7 parts of 5 MiB, the last one short
PARTS = math.ceil(SIZE / PART_SIZE)


class Interrupted(Exception):
    pass


def stop_after(parts: int, seen: list[TransferEvent]):  # type: ignore[no-untyped-def]
    def hook(event: TransferEvent) -> None:
        seen.append(event)
        if event.kind == "part" and sum(e.kind == "part" for e in seen) >= parts:
            raise Interrupted(f"stopped after {parts} parts")

    return hook


def server_parts(plane: S3Plane, model: str, version: int, path: str) -> list[int]:
    """Part numbers the store holds, as the control plane reads them from S3 (asking for
    the upload again is how a client resumes it)."""
    url = f"{plane.cp.api}/models/{model}/versions/{version}/files/{path}/multipart"
    answer = httpx.post(url, timeout=30)
    assert answer.status_code == 200, answer.text
    return sorted(p["part_number"] for p in answer.json()["completed_parts"])


def store_parts(plane: S3Plane) -> list[int]:
    """The same, straight from SeaweedFS: the one multipart upload in progress in the bucket."""
    s3 = plane.seaweed.client()
    uploads = s3.list_multipart_uploads(Bucket=plane.bucket).get("Uploads", [])
    assert len(uploads) == 1, uploads
    listed = s3.list_parts(
        Bucket=plane.bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
    )
    return sorted(p["PartNumber"] for p in listed.get("Parts", []))


def test_interrupted_multipart_push_resumes_with_only_the_missing_parts(
    s3_plane: S3Plane, tmp_path: Path
) -> None:
    model = unique("big")
    data = os.urandom(SIZE)
    (tmp_path / "weights.bin").write_bytes(data)
    (tmp_path / "config.json").write_bytes(b'{"layers": 2}')
    first: list[TransferEvent] = []
    start = len(s3_plane.store_proxy.part_uploads())
    with s3_plane.client(concurrency=2) as sdk:
        with pytest.raises(Interrupted):
            sdk.push(model, tmp_path, progress=stop_after(3, first))
        [pending] = sdk.list_versions(model)
        assert pending.status == VersionStatus.pending
        held = server_parts(s3_plane, model, pending.version, "weights.bin")
        assert 3 <= len(held) < PARTS, held
        assert store_parts(s3_plane) == held

        second: list[TransferEvent] = []
        before = len(s3_plane.store_proxy.part_uploads())
        assert sorted(s3_plane.store_proxy.part_uploads()[start:before]) == held
        version = sdk.push(model, tmp_path, progress=second.append)
        assert [v.version for v in sdk.list_versions(model)] == [pending.version]

    assert version.version == pending.version and version.status == VersionStatus.ready
    missing = sorted(set(range(1, PARTS + 1)) - set(held))
    # What reached the object store (through the recording proxy) in the second push:
    assert sorted(s3_plane.store_proxy.part_uploads()[before:]) == missing
    sent = sorted(e.part for e in second if e.kind == "part" and e.path == "weights.bin")
    assert sent == missing
    [start] = [e for e in second if e.kind == "start" and e.path == "weights.bin"]
    assert start.nbytes == len(held) * PART_SIZE  # resumed: those bytes were not sent again
    moved = sum(e.nbytes for e in second if e.kind == "advance" and e.path == "weights.bin")
    assert moved == SIZE - len(held) * PART_SIZE
    # config.json went through the proxied PUT in the first push, or else in the second
    [weights] = [f for f in version.files if f.path == "weights.bin"]
    assert weights.sha256 == hashlib.sha256(data).hexdigest() and weights.present
    assert (
        s3_plane.seaweed.client().list_multipart_uploads(Bucket=s3_plane.bucket).get("Uploads", [])
        == []
    )


def test_pull_reads_large_files_from_the_store_in_ranges_and_resumes(
    s3_plane: S3Plane, tmp_path: Path
) -> None:
    model = unique("pull")
    data = os.urandom(9 * 2**20 + 1)
    source = tmp_path / "model.pt"
    source.write_bytes(data)
    events: list[TransferEvent] = []
    with s3_plane.client() as sdk:
        version = sdk.push(model, source, progress=events.append)
        assert {e.part for e in events if e.kind == "part"} == {1, 2}
        blob = f"/blobs/sha256/{version.files[0].sha256}"
        seen = len(s3_plane.store_proxy.requests)
        pulled = sdk.pull(model, "latest", tmp_path / "back")
        assert pulled.format == "torchscript"
        assert (tmp_path / "back" / "model.pt").read_bytes() == data
        assert presigned_reads(s3_plane, blob, seen) == 2  # 8 MiB ranges, not one stream

        (tmp_path / "again").mkdir()
        (tmp_path / "again" / "model.pt.part").write_bytes(data[: 3 * 2**20])
        events.clear()
        sdk.pull(model, version.version, tmp_path / "again", progress=events.append)
        assert [e.nbytes for e in events if e.kind == "start"] == [3 * 2**20]
        assert sum(e.nbytes for e in events if e.kind == "advance") == len(data) - 3 * 2**20
        assert (tmp_path / "again" / "model.pt").read_bytes() == data

        # Interrupted after its first range: what is left is exactly the verified prefix.
        with pytest.raises(Interrupted):
            sdk.pull(model, version.version, tmp_path / "cut", progress=stop_on_advance)
        assert (tmp_path / "cut" / "model.pt.part").read_bytes() == data[: 8 * 2**20]
        sdk.pull(model, version.version, tmp_path / "cut")
    assert (tmp_path / "cut" / "model.pt").read_bytes() == data


def stop_on_advance(event: TransferEvent) -> None:
    if event.kind == "advance":
        raise Interrupted("stopped after the first range")


def presigned_reads(plane: S3Plane, blob: str, since: int) -> int:
    """GETs of the blob that reached the store with a presigned signature (the client's)."""
    return sum(
        1
        for method, path, query, _ in plane.store_proxy.requests[since:]
        if method == "GET" and path.endswith(blob) and "X-Amz-Signature" in query
    )


def test_a_killed_cli_push_is_resumed_by_the_next_one(s3_plane: S3Plane, tmp_path: Path) -> None:
    """`modelplane push` killed with SIGKILL mid-upload (one part at a time, killed once the
    third part is on its way): the next `modelplane push` sends only what S3 lacks."""
    model = unique("killed")
    data = os.urandom(SIZE)
    (tmp_path / "weights.bin").write_bytes(data)
    env = {**base_env(), "MODELPLANE_URL": s3_plane.cp.url, "MODELPLANE_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "cli", "push", model, str(tmp_path / "weights.bin")]
    command += ["--parallel", "1", "-o", "json"]
    proxy = s3_plane.store_proxy
    start = len(proxy.part_uploads())
    with (tmp_path / "push.log").open("wb") as log:
        pushing = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            wait_for(
                "the third part upload",
                lambda: len(proxy.part_uploads()) - start >= 3 or pushing.poll() is not None,
                60,
                lambda: (tmp_path / "push.log").read_text(),
            )
        finally:
            pushing.kill()
            pushing.wait(10)
    assert pushing.returncode == -signal.SIGKILL, (tmp_path / "push.log").read_text()
    with s3_plane.client() as sdk:
        [pending] = sdk.list_versions(model)
    held = server_parts(s3_plane, model, pending.version, "weights.bin")
    assert 2 <= len(held) < PARTS, held

    before = len(proxy.part_uploads())
    command[-4:-2] = ["--parallel", "4"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    assert (version["version"], version["status"]) == (pending.version, "ready")
    assert sorted(proxy.part_uploads()[before:]) == sorted(set(range(1, PARTS + 1)) - set(held))
    assert version["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
