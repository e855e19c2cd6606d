"""The ArtifactStore contract, run against the folder store and against SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from storage import (
    ArtifactNotFound,
    ArtifactStore,
    DigestMismatch,
    FileSystemArtifactStore,
    S3ArtifactStore,
    StorageError,
    blob_key,
)

MiB = 2**20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys(store: ArtifactStore, prefix: str = "") -> set[str]:
    return {info.key for info in store.list(prefix)}


def test_put_returns_size_and_sha256_and_open_reads_the_bytes(store: ArtifactStore) -> None:
    data = os.urandom(100_000)
    stored = store.put(blob_key(sha(data)), io.BytesIO(data))
    assert (stored.key, stored.size, stored.sha256) == (blob_key(sha(data)), len(data), sha(data))
    with store.open(stored.key) as stream:
        assert stream.read() == data


def test_open_reads_inclusive_byte_ranges(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 40
    store.put("ranges/obj", io.BytesIO(data))
    cases = [(0, 0), (0, 9), (10, 19), (100, None), (len(data) - 1, None), (5, len(data) + 50)]
    for start, end in cases:
        with store.open("ranges/obj", start, end) as stream:
            assert stream.read() == data[start : None if end is None else end + 1], (start, end)


def test_open_past_the_end_reads_nothing_and_bad_ranges_are_refused(store: ArtifactStore) -> None:
    store.put("short", io.BytesIO(b"0123456789"))
    with store.open("short", 10) as stream:
        assert stream.read() == b""
    with store.open("short", 50, 60) as stream:
        assert stream.read() == b""
    with pytest.raises(ValueError):
        store.open("short", 5, 4)
    with pytest.raises(ValueError):
        store.open("short", -1)


def test_chunks_stream_a_range_in_pieces_and_fail_before_the_first(
    store: ArtifactStore,
) -> None:
    data = os.urandom(10_000)
    store.put("chunked", io.BytesIO(data))
    for start, end in [(0, None), (1, 8999), (999, 1000), (9_999, None), (50, 20_000)]:
        pieces = list(store.chunks("chunked", start, end, piece_size=1000))  # several ranged GETs
        assert b"".join(pieces) == data[start : None if end is None else end + 1], (start, end)
        assert all(len(piece) <= 1000 for piece in pieces)
    assert list(store.chunks("chunked", 10_000, piece_size=1000)) == []
    with pytest.raises(ArtifactNotFound):
        store.chunks("chunked-missing")  # now, not on the first next()
    with pytest.raises(ValueError):
        store.chunks("chunked", 5, 4)
    unread = store.chunks("chunked")
    unread.close()  # type: ignore[attr-defined]  # both stores' iterators can stop early


def test_open_reads_in_small_pieces(store: ArtifactStore) -> None:
    data = os.urandom(10_000)
    store.put("pieces", io.BytesIO(data))
    with store.open("pieces", 1000, 8999) as stream:
        pieces = []
        while piece := stream.read(777):
            pieces.append(piece)
    assert b"".join(pieces) == data[1000:9000]


def test_stat_gives_size_and_time_and_none_when_absent(store: ArtifactStore) -> None:
    store.put("s/one", io.BytesIO(b"12345"))
    info = store.stat("s/one")
    assert info is not None and info.key == "s/one" and info.size == 5
    assert info.modified.tzinfo is not None
    assert store.stat("s/two") is None


def test_list_returns_keys_under_a_prefix(store: ArtifactStore) -> None:
    for key in ["blobs/sha256/aa", "blobs/sha256/ab", "blobs/other", "tmp/x"]:
        store.put(key, io.BytesIO(key.encode()))
    assert keys(store, "blobs/sha256/") == {"blobs/sha256/aa", "blobs/sha256/ab"}
    assert keys(store, "blobs/sha256/a") == {"blobs/sha256/aa", "blobs/sha256/ab"}
    assert keys(store, "blobs/") == {"blobs/sha256/aa", "blobs/sha256/ab", "blobs/other"}
    assert keys(store, "nothing/") == set()
    sizes = {info.key: info.size for info in store.list("tmp/")}
    assert sizes == {"tmp/x": 5}


def test_delete_removes_and_tolerates_absent_keys(store: ArtifactStore) -> None:
    store.put("d/x", io.BytesIO(b"x"))
    store.delete("d/x")
    store.delete("d/x")
    store.delete("d/never")
    assert store.stat("d/x") is None
    with pytest.raises(ArtifactNotFound):
        store.open("d/x")


def test_download_writes_the_file(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    store.put("dl", io.BytesIO(data))
    dest = tmp_path / "out" / "model.bin"
    store.download("dl", dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["model.bin"]


def test_absent_key_is_artifact_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound) as raised:
        store.open("blobs/sha256/missing")
    assert raised.value.key == "blobs/sha256/missing"
    with pytest.raises(ArtifactNotFound):
        store.open("blobs/sha256/missing", 10, 20)
    store.put("blobs/file", io.BytesIO(b"x"))
    with pytest.raises(ArtifactNotFound):
        store.open("blobs/file/below")
    with pytest.raises(ArtifactNotFound):
        store.open("blobs")
    assert store.stat("blobs/file/below") is None and store.stat("blobs") is None
    with pytest.raises(ArtifactNotFound):
        store.download("blobs/sha256/missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_writer_commit_publishes_only_on_commit(store: ArtifactStore) -> None:
    data = os.urandom(300_000)
    writer = store.writer("w/final")
    for offset in range(0, len(data), 65536):
        writer.write(data[offset : offset + 65536])
    assert store.stat("w/final") is None
    stored = writer.commit(expected_sha256=sha(data), expected_size=len(data))
    assert (stored.size, stored.sha256) == (len(data), sha(data))
    with store.open("w/final") as stream:
        assert stream.read() == data
    assert keys(store) == {"w/final"}


def test_writer_of_nothing_stores_an_empty_object(store: ArtifactStore) -> None:
    stored = store.writer("empty").commit(expected_sha256=sha(b""), expected_size=0)
    assert stored.size == 0
    with store.open("empty") as stream:
        assert stream.read() == b""


def test_writer_digest_mismatch_publishes_nothing(store: ArtifactStore) -> None:
    data = b"the real bytes" * 1000
    writer = store.writer("w/bad")
    writer.write(data)
    with pytest.raises(DigestMismatch) as raised:
        writer.commit(expected_sha256="0" * 64, expected_size=len(data))
    assert raised.value.expected_sha256 == "0" * 64
    assert raised.value.actual_sha256 == sha(data)
    assert "0" * 64 in str(raised.value) and sha(data) in str(raised.value)
    assert store.stat("w/bad") is None and keys(store) == set()
    writer.abort()  # still safe after a failed commit


def test_writer_size_mismatch_publishes_nothing(store: ArtifactStore) -> None:
    data = b"x" * 1000
    writer = store.writer("w/short")
    writer.write(data)
    with pytest.raises(DigestMismatch) as raised:
        writer.commit(expected_sha256=sha(data), expected_size=1001)
    assert (raised.value.expected_size, raised.value.actual_size) == (1001, 1000)
    assert store.stat("w/short") is None and keys(store) == set()


def test_writer_abort_discards_everything(store: ArtifactStore) -> None:
    writer = store.writer("w/aborted")
    writer.write(b"abc" * 10_000)
    writer.abort()
    writer.abort()
    assert store.stat("w/aborted") is None and keys(store) == set()
    with pytest.raises(StorageError):
        writer.write(b"more")


def test_writer_replaces_an_existing_object(store: ArtifactStore) -> None:
    store.put("w/again", io.BytesIO(b"old"))
    writer = store.writer("w/again")
    writer.write(b"new bytes")
    writer.commit()
    with store.open("w/again") as stream:
        assert stream.read() == b"new bytes"


def test_writer_in_many_parts_keeps_the_bytes(store: ArtifactStore) -> None:
    if isinstance(store, S3ArtifactStore):
        store = S3ArtifactStore(store.client, store.bucket, store.prefix, part_size=5 * MiB)
    data = os.urandom(12 * MiB + 12345)
    writer = store.writer("w/multi")
    for offset in range(0, len(data), 1 * MiB + 3):
        writer.write(data[offset : offset + 1 * MiB + 3])
    stored = writer.commit(expected_sha256=sha(data), expected_size=len(data))
    assert stored.size == len(data)
    with store.open("w/multi") as stream:
        assert stream.read() == data
    with store.open("w/multi", 5 * MiB - 10, 5 * MiB + 9) as stream:
        assert stream.read() == data[5 * MiB - 10 : 5 * MiB + 10]


def test_put_of_the_same_content_twice_is_fine(store: ArtifactStore) -> None:
    data = b"dedup me"
    first = store.put(blob_key(sha(data)), io.BytesIO(data))
    second = store.put(blob_key(sha(data)), io.BytesIO(data))
    assert first == second
    assert keys(store) == {blob_key(sha(data))}


def test_check_passes_on_a_working_store(store: ArtifactStore) -> None:
    store.check()


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "a\0b", ""])
def test_folder_store_rejects_keys_escaping_its_root(
    fs_store: FileSystemArtifactStore, key: str
) -> None:
    with pytest.raises(ValueError):
        fs_store.put(key, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        fs_store.open(key)


def test_folder_store_leaves_no_temporary_file(fs_store: FileSystemArtifactStore) -> None:
    writer = fs_store.writer("blobs/sha256/t")
    writer.write(b"x")
    writer.abort()
    fs_store.put("blobs/sha256/u", io.BytesIO(b"y"))
    assert os.listdir(fs_store.root / "blobs" / "sha256") == ["u"]
