"""The content-addressed cache on a real directory, fed by an in-memory source of bytes."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.cache import BlobCache, CacheError, DigestMismatch, serving_path, sha256_args
from deployer.contract import Assignment, FileRef


class Source:
    """Serves bytes by URL in small chunks and counts the downloads."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.downloads = 0

    def add(self, path: str, data: bytes, *, claimed: bytes | None = None) -> FileRef:
        url = f"/files/{path}"
        self.files[url] = data
        digest = hashlib.sha256(data if claimed is None else claimed).hexdigest()
        return FileRef(path=path, size=len(data), sha256=digest, url=url)

    def fetch(self, ref: FileRef) -> Iterator[bytes]:
        self.downloads += 1
        data = self.files[ref.url]
        for start in range(0, len(data), 7):
            yield data[start : start + 7]


def test_download_is_verified_and_renamed_into_place(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("model.pt", b"weights" * 10)
    path, downloaded = cache.ensure(ref, source.fetch)
    assert downloaded and path == tmp_path / "blobs" / "sha256" / ref.sha256
    assert path.read_bytes() == b"weights" * 10
    assert [p.name for p in cache.blobs.iterdir()] == [ref.sha256]


def test_cached_blob_is_not_downloaded_again(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("model.pt", b"x" * 50)
    cache.ensure(ref, source.fetch)
    _, downloaded = cache.ensure(ref, source.fetch)
    assert not downloaded and source.downloads == 1


def test_truncated_blob_is_downloaded_again(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("model.pt", b"x" * 50)
    path, _ = cache.ensure(ref, source.fetch)
    path.write_bytes(b"x" * 10)
    _, downloaded = cache.ensure(ref, source.fetch)
    assert downloaded and path.stat().st_size == 50


def test_digest_mismatch_names_both_digests_and_keeps_nothing(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("model.pt", b"tampered", claimed=b"original")
    with pytest.raises(DigestMismatch) as caught:
        cache.ensure(ref, source.fetch)
    actual = hashlib.sha256(b"tampered").hexdigest()
    assert ref.sha256 in str(caught.value) and actual in str(caught.value)
    assert list(cache.blobs.iterdir()) == []


def test_least_recently_used_unpinned_blobs_make_room(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 100), Source()
    old = source.add("old.pt", b"o" * 40)
    pinned = source.add("pinned.pt", b"p" * 40)
    cache.ensure(pinned, source.fetch)
    cache.ensure(old, source.fetch)
    past = time.time() - 100
    os.utime(cache.blob(pinned.sha256), (past, past))  # pinned is the oldest
    new = source.add("new.pt", b"n" * 40)
    cache.ensure(new, source.fetch, pinned={pinned.sha256})
    assert sorted(p.name for p in cache.blobs.iterdir()) == sorted([pinned.sha256, new.sha256])


def test_no_room_beside_pinned_blobs_is_a_clear_error(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 100), Source()
    pinned = source.add("pinned.pt", b"p" * 70)
    cache.ensure(pinned, source.fetch)
    with pytest.raises(CacheError, match="cache full: 40 bytes needed, 70 of 100"):
        cache.ensure(source.add("new.pt", b"n" * 40), source.fetch, pinned={pinned.sha256})
    with pytest.raises(CacheError, match="exceeds the cache limit of 100 bytes"):
        cache.ensure(source.add("huge.pt", b"h" * 101), source.fetch)


def test_replica_directory_links_blobs(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    graph, weights = source.add("graph.pt", b"g" * 9), source.add("sub/w.safetensors", b"w" * 5)
    for ref in (graph, weights):
        cache.ensure(ref, source.fetch)
    one = _assignment("r1", "torchscript", [graph])
    assert cache.materialise(one) == tmp_path / "replicas" / "r1" / "graph.pt"
    assert sha256_args(one) == [graph.sha256]
    both = _assignment("r2", "safetensors", [graph, weights])
    directory = cache.materialise(both)
    assert (directory / "sub" / "w.safetensors").read_bytes() == b"w" * 5
    assert sha256_args(both) == [f"graph.pt={graph.sha256}", f"sub/w.safetensors={weights.sha256}"]
    cache.release("r2")
    assert not directory.exists() and cache.blob(weights.sha256).exists()


@pytest.mark.parametrize(
    ("fmt", "paths", "single"),
    [
        ("onnx", ["model.onnx"], True),
        ("onnx", ["m/model.onnx", "m/weights.bin"], False),  # external data: the directory
        ("keras", ["model.keras"], True),
        ("tf_savedmodel", ["saved_model.pb"], False),  # a SavedModel is always a directory
        ("torchscript", ["weights.bin"], False),  # cannot make one: the runtime says why
        (None, ["model.pt"], False),
    ],
)
def test_the_serving_path_is_what_the_format_s_layout_says(
    tmp_path: Path, fmt: str | None, paths: list[str], single: bool
) -> None:
    source = Source()
    one = _assignment("r1", fmt, [source.add(p, b"bytes") for p in paths])
    assert serving_path(tmp_path, one) == (tmp_path / paths[0] if single else tmp_path)
    assert (len(sha256_args(one)[0]) == 64) is single


def test_a_path_escaping_the_replica_directory_is_refused(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("../evil.pt", b"e")
    cache.ensure(ref, source.fetch)
    with pytest.raises(CacheError, match="escapes"):
        cache.materialise(_assignment("r1", "torchscript", [ref]))


def _assignment(rid: str, fmt: str | None, files: list[FileRef]) -> Assignment:
    return Assignment.model_validate(
        {
            "replica_id": rid,
            "deployment": "d",
            "revision": 1,
            "desired": "run",
            "model": "m",
            "version": 1,
            "format": fmt,
            "files": [f.model_dump() for f in files],
            "signature": None,
            "device": "auto",
            "gpu_ids": [],
            "batching": {},
            "allow_pickle": False,
        }
    )


def test_a_new_worker_sweeps_partial_downloads_and_old_replica_directories(
    tmp_path: Path,
) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    ref = source.add("model.pt", b"m" * 10)
    cache.ensure(ref, source.fetch)
    cache.materialise(_assignment("old", "torchscript", [ref]))
    (cache.blobs / ".part-crashed").write_bytes(b"half")
    again = BlobCache(tmp_path, 1000)
    assert list(again.replicas.iterdir()) == []
    assert [p.name for p in again.blobs.iterdir()] == [ref.sha256]


def test_a_pulled_blob_is_vouched_for_until_it_changes(tmp_path: Path) -> None:
    """The worker hashed it when pulling: serving need not hash it again (--sha256-verified),
    through cache hits and replica links, but not once its bytes were written to."""
    data = b"weights" * 1000
    ref = FileRef(path="model.pt", size=len(data), sha256=hashlib.sha256(data).hexdigest(), url="u")
    cache = BlobCache(tmp_path, 1 << 20)
    assert not cache.verified(ref)
    path, _ = cache.ensure(ref, lambda _: iter([data]))
    assert cache.verified(ref)
    cache.materialise(_assignment("r1", "torchscript", [ref]))
    time.sleep(0.01)
    assert cache.ensure(ref, lambda _: iter([b"never"]))[1] is False  # a hit touches it
    assert cache.verified(ref)
    cache.release("r1")
    assert cache.verified(ref)
    with path.open("r+b") as f:  # flipped in place: same size, new mtime
        f.write(b"W")
    assert not cache.verified(ref)


def test_a_versions_shards_are_pulled_in_parallel_each_verified(tmp_path: Path) -> None:
    import threading

    from deployer.cache import FILES_AT_ONCE

    cache, source = BlobCache(tmp_path, 10_000), Source()
    refs = [source.add(f"model-0000{i}-of-00006.safetensors", bytes([i]) * 300) for i in range(6)]
    together = threading.Barrier(FILES_AT_ONCE, timeout=10)  # breaks unless 4 run at once

    def fetch(ref: FileRef) -> Iterator[bytes]:
        together.wait()
        yield from source.fetch(ref)

    pulled = cache.ensure_all(refs[:FILES_AT_ONCE], fetch)
    assert all(fresh for _, fresh in pulled)
    bad = source.add("model-00009-of-00009.safetensors", b"y" * 300, claimed=b"z" * 300)
    with pytest.raises(DigestMismatch, match="model-00009"):
        cache.ensure_all([*refs[FILES_AT_ONCE:], bad], source.fetch)
    assert not cache.blob(bad.sha256).exists()
    assert [p.read_bytes() for p, _ in cache.ensure_all(refs, source.fetch)] == [
        bytes([i]) * 300 for i in range(6)
    ]


def test_parallel_pulls_count_each_others_bytes_against_the_limit(tmp_path: Path) -> None:
    cache, source = BlobCache(tmp_path, 1000), Source()
    refs = [source.add(f"shard-{i}.safetensors", bytes([i]) * 400) for i in range(3)]
    with pytest.raises(CacheError, match="cache full"):
        cache.ensure_all(refs, source.fetch)
    assert cache.used_bytes() <= 1000
