"""The serving process's one settings object (CLI flags and `MODELPLANE_SERVING_*` env)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.enums import Device, ModelFormat


class Executor(StrEnum):
    auto = "auto"
    loop = "loop"
    thread = "thread"


class ServingSettings(BaseSettings):
    """Everything one serving process needs; built once in `serving.__main__`."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_SERVING_", extra="ignore", populate_by_name=True
    )

    name: str = Field(description="model name served under /v2/models/{name}")
    format: ModelFormat = Field(description="artifact format")
    path: Path = Field(description="model file, or a directory (safetensors: graph + weights)")
    version: str = Field("1", description="version served under /versions/{v}")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on")
    device: Device = Field(Device.auto, description="auto: CUDA when available, else CPU")
    max_batch_size: int = Field(
        32, ge=1, description="largest batch built from concurrent calls; 1 turns batching off"
    )
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="how long a forming batch may wait for more calls (a lone call never waits)",
    )
    batch_wait_lone: bool = Field(
        False,
        description="let a lone call wait max_delay_ms for company too (measured slower; off)",
    )
    executor: Executor = Field(
        Executor.auto,
        description="where the model runs: loop (the event loop thread), thread (a dedicated "
        "inference thread), auto (loop when a warm-up call takes under --inline-max-ms)",
    )
    inline_max_ms: float = Field(
        2.0, ge=0, description="auto executor: slowest warm-up call still run on the event loop"
    )
    max_queue: int = Field(
        1024, ge=1, description="calls queued or running before new ones get 503 + Retry-After"
    )
    sha256: list[str] = Field(
        default_factory=list,
        description="expected digest: HEX for a file path, or RELPATH=HEX per file of a directory",
    )
    sha256_verified: bool = Field(
        False,
        description="the --sha256 digests were verified by the deployer worker that started "
        "this process (its cache hashed the bytes when it pulled them and checks they are "
        "unchanged since): do not hash them again",
    )
    signature: str | None = Field(
        None, description="version signature as JSON text or a path to a JSON file"
    )
    allow_pickle: bool = Field(
        False, description="allow --format pickle (torch.save of a whole module runs code on load)"
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (1 avoids contention)")
    workers: int = Field(1, ge=1, description="processes sharing the port (SO_REUSEPORT)")
    max_request_bytes: int = Field(64 << 20, ge=1024, description="largest request body accepted")
    drain_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long in-flight calls may take before exit"
    )
    register_url: str | None = Field(
        None,
        description="control plane API to announce this endpoint to, e.g. http://cp:8000/api/v1 "
        "(no-op when unset)",
    )
    replica_id: str | None = Field(None, description="replica slot this process fills (announced)")
    token: str | None = Field(
        None,
        validation_alias=AliasChoices("MODELPLANE_SERVING_TOKEN", "MODELPLANE_TOKEN"),
        description="API key (worker scope) the announcer sends as 'Authorization: Bearer' "
        "(environment only: MODELPLANE_TOKEN, as the deployer worker sets it)",
        repr=False,
    )
    heartbeat_s: float = Field(10.0, gt=0, description="announcer heartbeat period")
    advertise_url: str | None = Field(
        None, description="URL announced to the control plane (default http://host:port)"
    )
    reuse_port: bool = Field(
        False, description="bind with SO_REUSEPORT (set by --workers for its processes)"
    )
    log_level: str = Field("warning", description="uvicorn log level")
    log_format: str = Field(
        "auto",
        pattern="^(auto|json|text)$",
        description="logs: json, text, or auto (JSON unless stderr is a terminal)",
    )
    request_id: str | None = Field(
        None,
        description="request id of the rollout that started this process: on every log "
        "line, and sent as X-Request-ID when announcing to the control plane",
    )
