"""The worker's side of docs/deployments-contract.md ("Worker protocol").

The bodies are the control plane's own (`contract.schemas`, pydantic + stdlib only), so
both ends validate the same shapes. `WorkerLease` reads only the three fields of the
registration answer the worker needs, so a richer answer never breaks a worker.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from contract.enums import ReplicaState
from contract.schemas import Assignment, ReplicaReport, WorkerHeartbeat
from contract.schemas import AssignmentFile as FileRef
from contract.schemas import Assignments as HeartbeatAnswer
from contract.schemas import WorkerRegister as WorkerRegistration

__all__ = [
    "Assignment",
    "FileRef",
    "HeartbeatAnswer",
    "ReplicaReport",
    "ReplicaState",
    "WorkerHeartbeat",
    "WorkerLease",
    "WorkerRegistration",
    "digests",
]


class WorkerLease(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 5.0


def digests(assignment: Assignment) -> frozenset[str]:
    return frozenset(f.sha256 for f in assignment.files)
