"""Where artifact bytes live: an S3-compatible store or a local folder, behind one contract."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.base import (
    BLOB_PREFIX,
    ArtifactNotFound,
    ArtifactStore,
    BlobWriter,
    DigestMismatch,
    DirectUploadStore,
    InvalidUpload,
    ObjectInfo,
    PartInfo,
    StorageError,
    StorageUnavailable,
    StoredObject,
    blob_key,
)
from storage.filesystem import FileSystemArtifactStore
from storage.s3 import DEFAULT_PART_SIZE, S3ArtifactStore

__all__ = [
    "BLOB_PREFIX",
    "ArtifactNotFound",
    "ArtifactStore",
    "BlobWriter",
    "DigestMismatch",
    "DirectUploadStore",
    "FileSystemArtifactStore",
    "InvalidUpload",
    "ObjectInfo",
    "PartInfo",
    "S3ArtifactStore",
    "StorageError",
    "StorageUnavailable",
    "StoredObject",
    "blob_key",
    "make_s3_client",
    "open_store",
]


def open_store(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    s3_access_key_id: str | None = None,
    s3_secret_access_key: str | None = None,
    s3_path_style: bool = True,
    s3_create_bucket: bool = False,
    part_size: int = DEFAULT_PART_SIZE,
) -> ArtifactStore:
    """``file:///abs/path``, a plain path (a folder, created if missing) or
    ``s3://bucket/optional/prefix``."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        client = make_s3_client(
            endpoint_url=s3_endpoint_url,
            region=s3_region,
            access_key_id=s3_access_key_id,
            secret_access_key=s3_secret_access_key,
            path_style=s3_path_style,
        )
        store = S3ArtifactStore(client, parts.netloc, parts.path.strip("/"), part_size=part_size)
        if s3_create_bucket:
            store.create_bucket()
        return store
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"storage URL {url!r}: only local file:// URLs are supported")
        return FileSystemArtifactStore(Path(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise ValueError(f"unsupported storage URL {url!r} (use a path, file:// or s3://)")
    return FileSystemArtifactStore(Path(url))


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    path_style: bool = True,
) -> object:
    """A boto3 S3 client that fails fast (seconds, not minutes) when the store is down."""
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if path_style else "virtual"},
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=2,
        read_timeout=30,
        max_pool_connections=32,
        signature_version="s3v4",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
