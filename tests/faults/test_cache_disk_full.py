"""Scenario 9: the worker's cache disk fills up. The cache lives on a real 2 MiB tmpfs
(mounted here as root; skipped, with the reason, where mounting is not allowed): blobs no replica
uses are evicted to make room, a download the disk cannot hold fails with a clear error and
leaves nothing, and no truncated file is ever kept under a blob's name."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.cache import BlobCache, CacheError
from deployer.contract import FileRef

KiB = 1024
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # not root (mounting needs it): said in the skip reason
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


class Source:
    """The control plane's side of a download: bytes by URL, in 64 KiB chunks; ``during``
    runs after the first chunk (another writer filling the disk meanwhile)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.during: list[Path] = []

    def add(self, name: str, size: int) -> FileRef:
        data = os.urandom(size)
        self.files[name] = data
        return FileRef(path=name, size=size, sha256=hashlib.sha256(data).hexdigest(), url=name)

    def fetch(self, ref: FileRef) -> Iterator[bytes]:
        data = self.files[ref.url]
        for n, start in enumerate(range(0, len(data), 64 * KiB)):
            if n == 1:
                for filler in self.during:
                    _fill(filler)
            yield data[start : start + 64 * KiB]


def _fill(path: Path) -> None:
    """Writes until the disk is full (ENOSPC), as another program would."""
    with path.open("ab") as sink:
        try:
            while True:
                sink.write(b"\0" * 64 * KiB)
                sink.flush()
        except OSError:
            pass


def _blob_names(cache: BlobCache) -> set[str]:
    return {p.name for p in cache.blobs.iterdir()}


def _whole(cache: BlobCache, source: Source) -> None:
    """Every blob present under its name is whole and right; no partial file is left."""
    for path in cache.blobs.iterdir():
        assert not path.name.startswith("."), f"partial download left: {path.name}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def test_unused_blobs_are_evicted_when_the_disk_fills(small_disk: Path) -> None:
    cache, source = BlobCache(small_disk / "cache", 1 << 30), Source()
    a, b, c = (source.add(n, 800 * KiB) for n in "abc")
    cache.ensure(a, source.fetch)
    cache.ensure(b, source.fetch)
    _, downloaded = cache.ensure(c, source.fetch, pinned=[b.sha256])
    assert downloaded and _blob_names(cache) == {b.sha256, c.sha256}  # a was unused: evicted
    _whole(cache, source)


def test_a_download_the_disk_cannot_hold_fails_clearly_and_leaves_nothing(
    small_disk: Path,
) -> None:
    cache, source = BlobCache(small_disk / "cache", 1 << 30), Source()
    a, b = source.add("a", 600 * KiB), source.add("b", 600 * KiB)
    cache.ensure(a, source.fetch)
    cache.ensure(b, source.fetch)
    big = source.add("big", 1200 * KiB)
    with pytest.raises(CacheError, match="disk full"):
        cache.ensure(big, source.fetch, pinned=[a.sha256, b.sha256])
    assert _blob_names(cache) == {a.sha256, b.sha256}
    _whole(cache, source)


def test_the_disk_filling_during_a_download_leaves_no_truncated_blob(small_disk: Path) -> None:
    cache, source = BlobCache(small_disk / "cache", 1 << 30), Source()
    a, b = source.add("a", 300 * KiB), source.add("b", 500 * KiB)
    cache.ensure(a, source.fetch)
    filler = small_disk / "someone-else.bin"
    source.during = [filler]
    with pytest.raises(CacheError, match="disk full"):  # a evicted, then full again
        cache.ensure(b, source.fetch)
    assert _blob_names(cache) == set()
    _whole(cache, source)
    filler.unlink()
    source.during = []
    path, downloaded = cache.ensure(b, source.fetch)
    assert downloaded and hashlib.sha256(path.read_bytes()).hexdigest() == b.sha256


def test_the_disk_filling_once_is_survived_by_evicting(small_disk: Path) -> None:
    cache, source = BlobCache(small_disk / "cache", 1 << 30), Source()
    old, new = source.add("old", 800 * KiB), source.add("new", 300 * KiB)
    cache.ensure(old, source.fetch)
    filler = small_disk / "someone-else.bin"
    filler.write_bytes(b"\0" * 800 * KiB)  # leaves ~400 KiB: the pre-check passes

    def fetch_then_fill(ref: FileRef) -> Iterator[bytes]:
        source.during = [filler] if not source.during and ref is new else []
        yield from source.fetch(ref)

    # The first try hits ENOSPC when the filler takes what was left; the unused `old` blob
    # is evicted and the second try fits in the room it left.
    path, downloaded = cache.ensure(new, fetch_then_fill)
    assert downloaded and _blob_names(cache) == {new.sha256}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == new.sha256
    _whole(cache, source)
