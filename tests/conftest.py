"""Fixtures shared by every test package: one SeaweedFS per session, stores on fresh buckets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.seaweed import SeaweedServer
from storage import ArtifactStore, FileSystemArtifactStore, S3ArtifactStore


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_client(seaweed: SeaweedServer) -> Any:
    return seaweed.client()


@pytest.fixture
def s3_bucket(seaweed_client: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:20]}"
    seaweed_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(seaweed_client: Any, s3_bucket: str) -> S3ArtifactStore:
    return S3ArtifactStore(seaweed_client, s3_bucket, "mp")


@pytest.fixture
def fs_store(tmp_path: Path) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(tmp_path / "artifacts")


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]
