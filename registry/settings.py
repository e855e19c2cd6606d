"""The registry's one settings object, read from ``MODELPLANE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Built once at the entry point (CLI, uvicorn factory, tests) and passed down."""

    model_config = SettingsConfigDict(env_prefix="MODELPLANE_", env_file=".env", extra="ignore")

    home: Path = Path(".modelplane")
    database_url: str = ""  # default: sqlite+aiosqlite file under ``home``
    storage_url: str = ""  # default: a folder under ``home``; ``file:///…`` or ``s3://b/prefix``
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_path_style: bool = True
    s3_create_bucket: bool = False
    max_upload_bytes: int = Field(default=64 * 2**30, gt=0)
    multipart_threshold: int = Field(default=64 * 2**20, gt=0)
    multipart_part_size: int = Field(default=8 * 2**20, ge=5 * 2**20)  # as boto3
    presign_expiry_seconds: int = Field(default=3600, gt=0)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1)
    # A steady pool, per worker process: overflow connections are opened and closed per
    # burst, which costs more under load than waiting a moment for a pooled one. 32 covers
    # a worker's share of 64 concurrent requests with 2 workers (64 of Postgres' default
    # 100 connections; lower it when running more workers or replicas).
    db_pool_size: int = Field(default=32, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    # Pre-ping costs three round trips per checkout on asyncpg (BEGIN; ping; ROLLBACK). Off:
    # a connection found dead invalidates the whole pool, so after an outage at most the
    # requests already holding a stale connection fail (503) and the next ones reconnect.
    db_pool_pre_ping: bool = False
    # Deployments: a worker silent for lease_ttl_s loses its replicas to other workers.
    lease_ttl_s: float = Field(default=15.0, gt=0)
    heartbeat_s: float = Field(default=3.0, gt=0)
    # The gateways' route feed is recomputed this often (and at once after a change made by
    # this process): it bounds how long another process's change, an expired heartbeat or a
    # revoked key takes to reach every gateway (plus one feed round trip).
    route_feed_poll_s: float = Field(default=0.5, gt=0, le=60)
    # The canary controller's period (registry/services/canary.py); 0 turns it off.
    canary_tick_s: float = Field(default=0.5, ge=0)
    # Security: every /api/v1 and /serve call needs `Authorization: Bearer mp_...` with a key
    # whose scopes cover it (registry/policy.py). Off only for local experiments and tests.
    auth_enabled: bool = True
    # Hardening (registry/hardening.py). Uploads of file bytes are bounded by max_upload_bytes.
    max_request_bytes: int = Field(default=16 * 2**20, gt=0, description="other bodies")
    max_header_bytes: int = Field(default=32 * 2**10, ge=1024, description="all headers")
    cors_origins: str = Field(
        default="", description="comma-separated origins allowed by CORS; empty: CORS off"
    )
    ui_csp: str = Field(
        default="default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
        "form-action 'self'; object-src 'none'",
        description="Content-Security-Policy of the /ui pages",
    )
    # Garbage collection: a periodic sweep (0 turns it off; `POST /api/v1/gc` still works).
    gc_interval_s: float = Field(default=3600.0, ge=0)
    # An unreferenced blob younger than this is kept: its version row may not be committed yet.
    gc_grace_s: float = Field(default=3600.0, ge=0)
    # Direct (multipart) uploads untouched for this long are aborted and their rows dropped.
    upload_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    # Webhooks: the dispatcher's poll period (0 turns it off), attempts and backoff.
    webhook_poll_s: float = Field(default=1.0, ge=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Delivered and failed deliveries stay in the log this long (pruned with each GC round).
    webhook_retention_s: float = Field(default=30 * 86400.0, gt=0)
    # Logs: "json", "text", or "auto" (JSON when stderr is not a terminal).
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$")
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.home / 'registry.db'}"
        if not self.storage_url:
            self.storage_url = str(self.home / "artifacts")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
