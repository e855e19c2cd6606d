"""ORM rows. Only repositories query them; rows never leave a service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry.db import Base, BigId, Json, UtcDateTime, utcnow

Timestamp = UtcDateTime()


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, str]] = mapped_column(Json, default=dict)
    last_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        Index("ix_versions_model_id_status_version", "model_id", "status", "version"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    format: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, str]] = mapped_column(Json, default=dict)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", Json, default=dict)
    signature: Mapped[dict[str, Any] | None] = mapped_column(Json)
    source: Mapped[str | None] = mapped_column(String(2048))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(Timestamp)


class FileRow(Base):
    """One entry of a version's manifest."""

    __tablename__ = "version_files"
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)


class BlobRow(Base):
    """Bytes verified stored under ``blobs/sha256/<hex>``."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class UploadRow(Base):
    """A direct multipart upload in progress for one file of a pending version."""

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("version_id", "path"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    upload_id: Mapped[str] = mapped_column(String(1024))
    temp_key: Mapped[str] = mapped_column(String(1024))
    part_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class AliasHistoryRow(Base):
    """Every move of an alias; ``None`` versions mean created from / deleted to nothing."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_id_alias", "model_id", "alias"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(63))
    from_version: Mapped[int | None]
    to_version: Mapped[int | None]
    actor: Mapped[str] = mapped_column(String(128))
    moved_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class EventRow(Base):
    """The audit log. Model names, not ids, so events outlive what they describe."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_model_id", "model", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str | None] = mapped_column(String(63))
    target: Mapped[str | None] = mapped_column(String(1100))
    before: Mapped[Any] = mapped_column(Json, nullable=True)
    after: Mapped[Any] = mapped_column(Json, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    client: Mapped[str | None] = mapped_column(String(128))
