"""Request and response bodies: pydantic + stdlib only (clients and workers reuse them)."""

from __future__ import annotations

import posixpath
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_PATH_LENGTH = 1024
MAX_SEGMENT_LENGTH = 255

ModelName = Annotated[str, StringConstraints(pattern=SLUG)]
AliasName = Annotated[str, StringConstraints(pattern=SLUG)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]
Tags = dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], str]


def check_path(path: str) -> str:
    """A file path inside a version: relative, normalised, never escaping. Raises ValueError."""
    if not path or len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"path must be 1-{MAX_PATH_LENGTH} characters")
    if "\x00" in path or "\\" in path:
        raise ValueError("path may not contain NUL or backslash")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ValueError("path must be relative")
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError("path may not contain empty, '.' or '..' segments")
    if any(len(s) > MAX_SEGMENT_LENGTH for s in segments):
        raise ValueError(f"path segments are at most {MAX_SEGMENT_LENGTH} characters")
    if any(ord(c) < 32 for c in path) or posixpath.normpath(path) != path:
        raise ValueError("path must be normalised and free of control characters")
    return path


FilePath = Annotated[str, AfterValidator(check_path)]


class VersionStatus(StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"
    archived = "archived"


class Problem(BaseModel):
    """An RFC 9457 problem: the body of every error answer."""

    type: str = Field(examples=["/problems/version-not-found"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="the failing fields of a validation error"
    )
    model_config = ConfigDict(extra="allow")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: ModelName
    description: str = Field(default="", max_length=65536)
    tags: Tags = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=65536)
    tags: Tags | None = None


class ModelOut(BaseModel):
    name: str
    description: str
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: FilePath
    size: int = Field(ge=0)
    sha256: Sha256


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileSpec] = Field(min_length=1, max_length=10000)
    format: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=65536)
    tags: Tags = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    signature: dict[str, Any] | None = None
    source: str | None = Field(default=None, max_length=2048)

    @model_validator(mode="after")
    def _unique_paths(self) -> VersionCreate:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("two files share the same path")
        return self


class VersionUpdate(BaseModel):
    """Ready versions accept only ``description`` and ``tags``."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(default=None, max_length=65536)
    tags: Tags | None = None
    metadata: dict[str, Any] | None = None


class MultipartOffer(BaseModel):
    url: str = Field(description="POST here to get presigned part URLs")
    part_size: int
    parts: int


class UploadInfo(BaseModel):
    method: Literal["PUT"] = "PUT"
    url: str
    multipart: MultipartOffer | None = None


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str
    present: bool
    upload: UploadInfo | None = None


class VersionOut(BaseModel):
    model: str
    version: int
    status: VersionStatus
    format: str | None
    description: str
    tags: dict[str, str]
    metadata: dict[str, Any]
    signature: dict[str, Any] | None
    source: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    files: list[FileOut]


class VersionSummary(BaseModel):
    model: str
    version: int
    status: VersionStatus
    format: str | None
    description: str
    tags: dict[str, str]
    created_by: str
    created_at: datetime
    updated_at: datetime


class PartUrl(BaseModel):
    part_number: int
    url: str


class CompletedPart(BaseModel):
    part_number: int
    size: int
    etag: str


class MultipartOut(BaseModel):
    upload_id: str
    part_size: int
    parts: list[PartUrl]
    completed_parts: list[CompletedPart]


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
    updated_at: datetime


class AliasMove(BaseModel):
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    moved_at: datetime


class EventOut(BaseModel):
    id: int
    time: datetime
    actor: str
    action: str
    model: str | None
    target: str | None
    before: Any
    after: Any
    request_id: str | None
    client: str | None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = Field(default_factory=dict)
