"""The gateway process's one settings object: flags and ``MODELPLANE_GATEWAY_*`` variables."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

HELP = """Serve the stable URL /serve/{deployment}/... as a process of its own, following a
control plane's route table (python -m gateway --registry-url http://cp:8000). Stateless: run
N behind any balancer. Every option can also come from the environment: --port 9000 is
MODELPLANE_GATEWAY_PORT=9000. The key (scope gateway or admin) is best given as
MODELPLANE_GATEWAY_TOKEN or MODELPLANE_TOKEN: flags show in ps."""


class GatewaySettings(BaseSettings):
    """Everything one gateway process needs; built once by `gateway.__main__`."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_GATEWAY_",
        extra="ignore",
        populate_by_name=True,
        cli_prog_name="python -m gateway",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_show_env_vars=True,
        json_schema_extra={"description": HELP},
    )

    registry_url: str = Field(
        description="the control plane (or its balancer), e.g. http://cp:8000"
    )
    token: str | None = Field(
        None,
        validation_alias=AliasChoices("MODELPLANE_GATEWAY_TOKEN", "MODELPLANE_TOKEN"),
        description="API key with the gateway (or admin) scope",
        repr=False,
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    id: str | None = Field(None, description="this gateway in traffic reports (default host:port)")
    report_s: float = Field(1.0, gt=0, le=60, description="seconds between traffic reports")
    wait_s: float = Field(25.0, gt=0, le=300, description="long poll of the route feed")
    auth: bool = Field(False, description="check API keys even when the feed says auth is off")
    shadow_queue: int = Field(256, ge=1, description="mirrored calls waiting; more are dropped")
    shadow_workers: int = Field(4, ge=1, le=64)
    engine: Literal["auto", "haproxy", "python"] = Field(
        "auto",
        description="what serves the port: haproxy (the native data plane, calls it cannot "
        "route go to the Python forwarder behind it), python (the forwarder alone), auto "
        "(haproxy when an HAProxy >= 2.6 is installed, unless --workers asks for processes)",
    )
    haproxy: str = Field("haproxy", description="the HAProxy binary (engine haproxy)")
    threads: int | None = Field(
        None, ge=1, le=64, description="HAProxy's threads (default: one per core)"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="engine python: processes on the port (SO_REUSEPORT), e.g. one per core",
    )
    reuse_port: CliSuppress[bool] = False  # set for each of the workers' processes
    log_level: str = Field("warning", description="uvicorn log level")
    log_format: str = Field("auto", description="json, text, or auto (JSON unless a terminal)")

    def gateway_id(self) -> str:
        return self.id or f"{socket.gethostname()}:{self.port}"
