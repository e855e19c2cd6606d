"""The worker's one settings object: flags (`python -m deployer --help`, pydantic-settings'
CLI) and `MODELPLANE_WORKER_*` environment."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

SHARED_TOKEN_ENV = "MODELPLANE_TOKEN"

HELP = """Modelplane deployer worker: claims replicas, pulls their files into a local cache and
runs them as serving processes.

Every option can also come from MODELPLANE_WORKER_<NAME> (flags win). SIGTERM/SIGINT drain
every serving process, then exit."""


def all_cpus() -> int:
    return os.cpu_count() or 1


class WorkerSettings(BaseSettings):
    """Everything one deployer worker needs; built once, in `deployer.__main__`."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_WORKER_",
        extra="ignore",
        json_schema_extra={"description": HELP},
        cli_prog_name="python -m deployer",
        cli_show_env_vars=True,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    control_plane: str = Field(description="control plane base URL, e.g. http://cp:8000")
    token: str | None = Field(
        None,
        description=f"API key with the worker scope (else env {SHARED_TOKEN_ENV}), sent as "
        f"'Authorization: Bearer'; also handed to serving processes as {SHARED_TOKEN_ENV}. "
        "Prefer the environment to the flag: flags show in ps",
        repr=False,
    )
    name: str = Field(default_factory=socket.gethostname, description="worker name")
    address: str = Field("127.0.0.1", description="IP serving processes bind to and advertise")
    gpus: str = Field(
        "", description="GPU ids this worker may use: '0,1', 'auto' (torch.cuda), '' (none)"
    )
    cpu_slots: int = Field(default_factory=all_cpus, ge=0, description="CPU replicas at once")
    cache_dir: Path = Field(Path(".modelplane/cache"), description="content-addressed cache")
    cache_max_bytes: int = Field(50 * 2**30, gt=0, description="cache size bound (LRU)")
    port_range: str = Field("20000-29999", description="ports for serving processes, A-B")
    poll_s: float = Field(0.25, gt=0, description="how often processes are observed")
    claim_s: float = Field(
        0.5,
        gt=0,
        description="with free capacity, heartbeat (which claims new replicas) at least this "
        "often, not only every heartbeat_s of the control plane",
    )
    warm_spare: bool = Field(
        True,
        description="keep one interpreter with torch and serving imported, waiting to become "
        "the next serving process (saves the imports, seconds, on every start)",
    )
    drain_timeout_s: float = Field(30.0, gt=0, description="SIGTERM → SIGKILL for a replica")
    max_restarts: int = Field(5, ge=0, description="restarts of a crashing replica before failed")
    crash_reset_s: float = Field(
        60.0, gt=0, description="a replica ready this long has its earlier crashes forgiven"
    )
    serving_heartbeat_s: float | None = Field(
        None, gt=0, description="serving processes' heartbeat (default: the worker's)"
    )
    serving_log_level: str = Field("warning", description="serving processes' log level")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus /metrics on this port (0: any free)"
    )
    metrics_address: str = Field("127.0.0.1", description="address the /metrics port binds")
    log_level: str = Field("INFO", description="the worker's own log level")
    log_format: str = Field(
        "auto", pattern="^(auto|json|text)$", description="json, text, or auto (JSON if no TTY)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared = SharedToken(settings_cls)
        return (init_settings, env_settings, shared, dotenv_settings, file_secret_settings)

    @field_validator("control_plane")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("port_range")
    @classmethod
    def _range(cls, value: str) -> str:
        low, _, high = value.partition("-")
        if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high) < 65536):
            raise ValueError(f"port range must be A-B with 0 < A <= B < 65536, got {value!r}")
        return value

    @property
    def ports(self) -> range:
        low, high = self.port_range.split("-")
        return range(int(low), int(high) + 1)

    def gpu_ids(self) -> list[int]:
        """The GPU ids to offer; `auto` asks torch (imported only then: it is slow to load)."""
        spec = self.gpus.strip()
        if spec == "auto":
            import torch

            return list(range(torch.cuda.device_count()))
        return [int(part) for part in spec.split(",") if part.strip()]


class SharedToken(PydanticBaseSettingsSource):
    """`token` from MODELPLANE_TOKEN, below MODELPLANE_WORKER_TOKEN: the variable the SDK,
    the CLI and serving processes read too. A source rather than a validation alias, whose
    every choice would become a flag of its own."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the one variable

    def __call__(self) -> dict[str, Any]:
        token = os.environ.get(SHARED_TOKEN_ENV)
        return {"token": token} if token else {}
