"""ORM rows. Only repositories query them; rows never leave a service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
)
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
    # Moving (or deleting) a protected alias needs the `promote` or `admin` scope.
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


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
    actor_key_id: Mapped[str | None] = mapped_column(String(32), index=True)


class DeploymentRow(Base):
    """Desired state: a model's version (or an alias followed) on N replicas.

    ``revision`` is the current (primary) revision; ``last_revision`` counts revisions made
    (history only grows). A canary's, a split's or a shadow's revision is made beside the
    current one without moving ``revision``; ``lanes`` says which revisions take calls now
    (``contract.traffic.LaneOut`` dicts; ``None``: the current revision alone, as during a
    plain rolling update); ``canary`` is the newest canary's state (``CanaryOut`` as JSON),
    kept after it ends.
    """

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    alias: Mapped[str | None] = mapped_column(String(63))
    revision: Mapped[int] = mapped_column(default=0)
    last_revision: Mapped[int] = mapped_column(default=0, server_default="0")
    lanes: Mapped[list[dict[str, Any]] | None] = mapped_column(Json, nullable=True)
    canary: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class RevisionRow(Base):
    """One numbered spec of a deployment: the version and the settings it runs."""

    __tablename__ = "deployment_revisions"
    __table_args__ = (UniqueConstraint("deployment_id", "revision"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int]
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    version: Mapped[int]
    settings: Mapped[dict[str, Any]] = mapped_column(Json)
    reason: Mapped[str] = mapped_column(String(16))
    # The request that made the revision (X-Request-ID): workers and serving processes
    # log it for everything they do for the revision, so one grep follows a rollout.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # What the newest serving process of the revision reported of its `optimize` setting
    # (contract.optimize.OptimizationReport): kept after its endpoints are gone.
    optimization: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    # A canary revision's outcome: {"state", "reason", "figures", "base_figures", "at"}.
    verdict: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class TrafficCountRow(Base):
    """What one gateway counted for one revision over one report window
    (``contract.traffic.RevisionCounts``). Canary verdicts and the dashboard's charts sum
    them; rows older than the charts' window are pruned."""

    __tablename__ = "traffic_counts"
    __table_args__ = (
        Index("ix_traffic_counts_deployment_id_ended_at", "deployment_id", "ended_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int]
    gateway: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    ended_at: Mapped[datetime] = mapped_column(Timestamp)
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency: Mapped[list[int]] = mapped_column(Json, default=list)
    shadow_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_errors: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_compared: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_disagreements: Mapped[int] = mapped_column(BigInteger, default=0)
    shadow_dropped: Mapped[int] = mapped_column(BigInteger, default=0)


class WorkerRow(Base):
    """A deployer process and its capacity."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))
    gpus: Mapped[list[int]] = mapped_column(Json)
    cpu_slots: Mapped[int]
    registered_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)


class ReplicaRow(Base):
    """One slot of a revision, leased by a worker while its lease lasts."""

    __tablename__ = "replicas"
    __table_args__ = (Index("ix_replicas_deployment_id_revision", "deployment_id", "revision"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision_id: Mapped[int] = mapped_column(
        ForeignKey("deployment_revisions.id", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int]
    index: Mapped[int]
    gpus: Mapped[int]
    desired: Mapped[str] = mapped_column(String(8), default="run")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(
        ForeignKey("workers.id", ondelete="SET NULL"), index=True
    )
    gpu_ids: Mapped[list[int]] = mapped_column(Json, default=list)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    restarts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class EndpointRow(Base):
    """A running serving process, registered by itself for a replica."""

    __tablename__ = "endpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    replica_id: Mapped[str | None] = mapped_column(
        ForeignKey("replicas.id", ondelete="SET NULL"), index=True
    )
    worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id", ondelete="SET NULL"))
    revision: Mapped[int]
    version: Mapped[int]
    url: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    optimization: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class ApiKeyRow(Base):
    """An API key: only the sha256 of its token is kept; ``prefix`` finds the row.

    ``model_globs`` empty means every model; otherwise the key reaches only models whose
    name matches one of the globs (``team-a-*``).
    """

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(Json)
    model_globs: Mapped[list[str]] = mapped_column(Json, default=list)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class WebhookRow(Base):
    """A subscription: signed JSON POSTs to ``url`` for the event types in ``events``."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[str]] = mapped_column(Json)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class OutboxRow(Base):
    """An event webhooks may want, written in the transaction that records the event; the
    dispatcher fans it out into deliveries (the request never waits for a receiver)."""

    __tablename__ = "webhook_outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class DeliveryRow(Base):
    """One event for one webhook: attempts, their outcome, and when to try next."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
