"""What only the S3 store does: direct (presigned) uploads, verify, promote, presigned GETs."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.seaweed import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SeaweedServer
from storage import (
    ArtifactNotFound,
    ArtifactStore,
    DigestMismatch,
    DirectUploadStore,
    FileSystemArtifactStore,
    S3ArtifactStore,
    open_store,
)

MiB = 2**20
PART = 5 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_parts(s3_store: S3ArtifactStore) -> S3ArtifactStore:
    return S3ArtifactStore(s3_store.client, s3_store.bucket, s3_store.prefix, part_size=PART)


def put_part(url: str, data: bytes) -> str:
    answer = httpx.put(url, content=data, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.headers["etag"]


def test_s3_store_is_a_direct_upload_store(s3_store: S3ArtifactStore) -> None:
    assert isinstance(s3_store, ArtifactStore) and isinstance(s3_store, DirectUploadStore)
    assert not isinstance(FileSystemArtifactStore(Path("/tmp")), DirectUploadStore)


def test_presigned_multipart_upload_resumes_verifies_and_promotes(
    small_parts: S3ArtifactStore,
) -> None:
    store = small_parts
    data = os.urandom(2 * PART + 1234)
    chunks = [data[i : i + PART] for i in range(0, len(data), PART)]
    upload_id = store.create_multipart("tmp/upload-1")
    urls = [store.presign_part("tmp/upload-1", upload_id, n) for n in (1, 2, 3)]

    with ThreadPoolExecutor(2) as pool:  # the client's first session: two parts, in parallel
        etags = list(pool.map(put_part, urls[:2], chunks[:2]))
    done = store.list_parts("tmp/upload-1", upload_id)
    assert [(p.number, p.size, p.etag) for p in done] == [
        (1, PART, etags[0]),
        (2, PART, etags[1]),
    ]
    assert store.stat("tmp/upload-1") is None

    # Resuming: ask which parts are there, send only the missing one.
    missing = {1, 2, 3} - {p.number for p in done}
    assert missing == {3}
    put_part(store.presign_part("tmp/upload-1", upload_id, 3), chunks[2])
    store.complete_multipart("tmp/upload-1", upload_id, store.list_parts("tmp/upload-1", upload_id))

    verified = store.verify("tmp/upload-1", expected_sha256=sha(data), expected_size=len(data))
    assert (verified.size, verified.sha256) == (len(data), sha(data))
    with pytest.raises(DigestMismatch) as raised:
        store.verify("tmp/upload-1", expected_sha256="f" * 64)
    assert raised.value.actual_sha256 == sha(data)
    with pytest.raises(DigestMismatch):
        store.verify("tmp/upload-1", expected_sha256=sha(data), expected_size=len(data) + 1)

    store.promote("tmp/upload-1", f"blobs/sha256/{sha(data)}")
    assert store.stat("tmp/upload-1") is None
    with store.open(f"blobs/sha256/{sha(data)}") as stream:
        assert stream.read() == data


def test_abort_multipart_drops_the_upload_and_tolerates_unknown_ids(
    s3_store: S3ArtifactStore,
) -> None:
    upload_id = s3_store.create_multipart("tmp/aborted")
    put_part(s3_store.presign_part("tmp/aborted", upload_id, 1), b"part one")
    s3_store.abort_multipart("tmp/aborted", upload_id)
    s3_store.abort_multipart("tmp/aborted", upload_id)
    uploads = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)
    assert uploads.get("Uploads", []) == []
    assert s3_store.stat("tmp/aborted") is None


def test_verify_of_an_absent_key_is_not_found(s3_store: S3ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        s3_store.verify("tmp/none", expected_sha256="0" * 64)


def test_promote_of_a_large_object_uses_multipart_copy(small_parts: S3ArtifactStore) -> None:
    data = os.urandom(4 * PART + 99)  # above the managed copy's multipart threshold
    writer = small_parts.writer("tmp/big")
    writer.write(data)
    writer.commit()
    small_parts.promote("tmp/big", "blobs/big")
    assert small_parts.stat("tmp/big") is None
    assert small_parts.verify("blobs/big", expected_sha256=sha(data)).size == len(data)


def test_promote_of_an_absent_key_is_not_found(s3_store: S3ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        s3_store.promote("tmp/none", "blobs/none")


def test_presigned_get_downloads_with_a_file_name(s3_store: S3ArtifactStore) -> None:
    data = os.urandom(1000)
    s3_store.put("blobs/x", io.BytesIO(data))
    answer = httpx.get(s3_store.presign_get("blobs/x", filename="model v1.safetensors"))
    assert answer.status_code == 200 and answer.content == data
    assert "model" in answer.headers.get("content-disposition", "")
    assert httpx.get(s3_store.presign_get("blobs/x")).content == data


def test_list_parts_of_an_unknown_upload_is_not_found(s3_store: S3ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        s3_store.list_parts("tmp/none", "no-such-upload")


def test_writer_memory_stays_bounded_by_parts_in_flight(s3_store: S3ArtifactStore) -> None:
    part = 8 * MiB
    store = S3ArtifactStore(s3_store.client, s3_store.bucket, s3_store.prefix, part_size=part)
    block = os.urandom(1 * MiB)
    digest = hashlib.sha256()
    gc.collect()
    tracemalloc.start()
    try:
        writer = store.writer("mem/big")
        for _ in range(64):
            writer.write(block)
            digest.update(block)
        writer.commit(expected_sha256=digest.hexdigest())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"writer peak traced memory {peak / MiB:.1f} MiB")
    assert peak < (store.parts_in_flight + 2) * part, f"peak {peak / MiB:.1f} MiB"
    info = store.stat("mem/big")
    assert info is not None and info.size == 64 * MiB


def test_open_store_builds_folder_and_s3_stores(tmp_path: Path, seaweed: SeaweedServer) -> None:
    assert isinstance(open_store(str(tmp_path / "a")), FileSystemArtifactStore)
    assert (tmp_path / "a").is_dir()
    folder = open_store(f"file://{tmp_path / 'b'}")
    assert isinstance(folder, FileSystemArtifactStore) and folder.root == tmp_path / "b"
    store = open_store(
        "s3://open-store-bucket/some/prefix/",
        s3_endpoint_url=seaweed.endpoint_url,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
        s3_create_bucket=True,
        part_size=PART,
    )
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.part_size) == (
        "open-store-bucket",
        "some/prefix/",
        PART,
    )
    store.check()
    store.put("k", io.BytesIO(b"v"))
    client: Any = store.client
    assert client.get_object(Bucket="open-store-bucket", Key="some/prefix/k")["Body"].read() == b"v"


def test_open_store_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError):
        open_store("ftp://host/x")
    with pytest.raises(ValueError):
        open_store("s3:///no-bucket")


def test_download_fetches_ranges_in_parallel_into_one_file(
    small_parts: S3ArtifactStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * PART + 5)
    small_parts.put("blobs/dl", io.BytesIO(data))
    small_parts.download("blobs/dl", tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == data
    assert os.listdir(tmp_path) == ["model.bin"]
