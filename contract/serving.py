"""What a deployer worker tells a serving process: its settings, as one JSON document.

`ServingSpec` is every setting of `python -m serving` except the API key, which travels in
the environment (`MODELPLANE_TOKEN`) so that it never lands in a payload or a log. The
worker validates a spec here, torch-free, and hands over `spec.model_dump_json()`:

- to a warm spare (`python -m serving.spare`), as one `SpareJob` line on its stdin;
- to a cold `python -m serving`, in the environment variable `SETTINGS_ENV`.

`serving.settings.ServingSettings` is this model plus the process's own sources (flags,
`MODELPLANE_SERVING_*`, the key), so both ends validate one shape.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.enums import Device
from contract.formats import known_formats
from contract.optimize import Optimize

SETTINGS_ENV = "MODELPLANE_SERVING_SETTINGS_JSON"


class Executor(StrEnum):
    """Where a serving process runs its model."""

    auto = "auto"
    loop = "loop"
    thread = "thread"


class ServingSpec(BaseModel):
    """Everything one serving process needs to serve one model, but its API key."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        # an open set: a third party's runtime brings its format through the entry points
        if value not in (known := known_formats()):
            raise ValueError(f"unknown format {value!r}; known: {', '.join(known)}")
        return value

    name: str = Field(description="model name served under /v2/models/{name}")
    format: str = Field(description="artifact format: a built-in one or an installed runtime's")
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
        description="expected digest: HEX for a file path, or RELPATH=HEX per file of a "
        "directory (repeat the flag, or give a JSON array)",
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
    optimize: Optimize = Field(
        default_factory=Optimize,
        description="deploy-time optimisation, checked on the version's examples before ready",
    )
    optimized_cache_dir: Path | None = Field(
        None,
        description="where optimised artifacts are kept for reuse (the worker's cache); "
        "default: beside the model",
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


class SpareJob(BaseModel):
    """The one line a warm spare reads on stdin: the spec it becomes, and environment to
    apply first (`CUDA_VISIBLE_DEVICES`, read when CUDA initialises, which has not happened)."""

    model_config = ConfigDict(extra="forbid")

    settings: ServingSpec
    env: dict[str, str] = Field(default_factory=dict)
