"""The worker's view of docs/deployments-contract.md ("Worker protocol").

The control plane owns these bodies in `registry/schemas.py`; the worker keeps its own copy of
the few fields it reads, tolerant of extra ones (`extra="ignore"`), so a control plane that adds
fields never breaks a running worker.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ReplicaState = Literal[
    "pending",
    "pulling",
    "loading",
    "warming",
    "ready",
    "draining",
    "stopped",
    "unhealthy",
    "failed",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WorkerRegistration(_Body):
    name: str
    host: str
    address: str
    gpus: list[int]
    cpu_slots: int


class WorkerLease(_Body):
    id: str
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 5.0


class FileRef(_Body):
    path: str
    size: int = Field(ge=0)
    sha256: str
    url: str


class Batching(_Body):
    max_batch_size: int = 32
    max_delay_ms: float = 0.0


class Assignment(_Body):
    replica_id: str
    deployment: str
    revision: int
    desired: Literal["run", "stop"] = "run"
    model: str
    version: int
    format: str | None = None
    files: list[FileRef]
    signature: dict[str, Any] | None = None
    device: str = "auto"
    gpu_ids: list[int] = Field(default_factory=list)
    batching: Batching = Field(default_factory=Batching)
    allow_pickle: bool = False

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(f.sha256 for f in self.files)


class ReplicaReport(_Body):
    replica_id: str
    state: ReplicaState
    reason: str | None = None
    restarts: int = 0


class HeartbeatAnswer(_Body):
    assignments: list[Assignment] = Field(default_factory=list)
