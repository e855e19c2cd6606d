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
    computed_field,
    model_validator,
)

from contract import formats
from contract.enums import (
    DeploymentStatus,
    Device,
    EndpointStatus,
    ReplicaState,
    VersionStatus,
)
from contract.optimize import OptimizationReport, Optimize
from contract.traffic import CanaryOut, LaneOut, ShadowSpec, Strategy, TrafficEntry

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


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A version's metadata: free-form, but a `pipeline` in it must be a valid pipeline."""
    if metadata.get("pipeline") is not None:
        from contract.pipeline import parse_pipeline  # it imports check_path from here

        parse_pipeline(metadata["pipeline"])
    return metadata


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]


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
    metadata: Metadata = Field(default_factory=dict)
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
    metadata: Metadata | None = None


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

    @computed_field  # type: ignore[prop-decorator]
    @property
    def signature_hint(self) -> str | None:
        """Set when the version's graph keeps no tensor shapes (TorchScript) and it has no
        signature: how it serves without one, and how to give it one."""
        return formats.signature_hint(self.format, self.signature, self.metadata, self.files)


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
    protected: bool | None = Field(
        default=None,
        description="mark (true) or unmark (false) the alias protected; moving or deleting a "
        "protected alias, and changing this, need the `promote` or `admin` scope",
    )


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
    updated_at: datetime
    protected: bool = False


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
    actor_key_id: str | None = Field(
        default=None, description="the API key that made the change or was denied"
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, str] = Field(default_factory=dict)


# --- Deployments, workers, endpoints (docs/deployments-contract.md) ---------------------

DeploymentName = Annotated[str, StringConstraints(pattern=SLUG)]


class Desired(StrEnum):
    run = "run"
    stop = "stop"


class RevisionReason(StrEnum):
    create = "create"
    update = "update"
    rollback = "rollback"
    alias_moved = "alias-moved"
    canary = "canary"  # a new revision beside the current one, taking a growing share
    split = "split"  # type: ignore[assignment]  # (str.split) kept live by a fixed split
    shadow = "shadow"  # a version taking mirrored calls only


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(default=32, ge=1, le=65536)
    max_delay_ms: float = Field(default=0.0, ge=0, le=60_000)


def _check_device(device: Device, gpus: int) -> None:
    if device is Device.cpu and gpus > 0:
        raise ValueError("device 'cpu' takes no GPUs: set gpus to 0")
    if device is Device.cuda and gpus == 0:
        raise ValueError("device 'cuda' needs gpus >= 1")


MAX_UNAVAILABLE = (
    "how many replicas may stop before their replacements are ready, used only when no worker "
    "has room for a new replica beside the old ones (new replicas start beside the old when "
    "there is room). Default: 1 when replicas > 1, else 0 (a single replica is never stopped "
    "first: the rollout waits, `pending` with a reason)"
)
OPTIMIZE = (
    "deploy-time optimisation: none | int8_dynamic | fp16 | bf16 | auto, or {mode, "
    "max_abs_error, max_rel_error, min_top1_agreement, unchecked}; checked against the "
    "version's example inputs before any traffic (contract/optimize.py)"
)
TRAFFIC = (
    "a fixed split between versions kept live together, each with its replicas: "
    "[{version, percent, replicas?}], percents adding up to 100; the largest share is the "
    "primary (the deployment's current revision)"
)
SHADOW = (
    "mirror `percent` of calls to `version`: its answers are dropped and compared with the "
    "primary's (counted per revision); null removes the shadow"
)
STRATEGY = (
    'how a version change rolls out: {"canary": {steps, interval_s, max_error_rate, '
    "max_p99_ms, min_calls, ready_timeout_s}}; kept on the deployment, so an alias move "
    "rolls out the same way. Without it the new revision replaces the old one replica by "
    "replica"
)
AUTO_ROLLBACK = (
    "when a new revision fails (a replica cannot load, crash-loops, or its bytes do not "
    "match), start a rollback to the revision before it at once"
)


class DeploymentCreate(BaseModel):
    """Deploy a pinned ``version`` or follow an ``alias`` (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid")
    name: DeploymentName
    model: ModelName
    version: int | None = Field(default=None, ge=1)
    alias: AliasName | None = None
    replicas: int = Field(default=1, ge=1, le=256)
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per replica; 0 runs on a CPU slot")
    device: Device = Device.auto
    batching: Batching = Field(default_factory=Batching)
    allow_pickle: bool = False
    max_unavailable: int | None = Field(default=None, ge=0, le=256, description=MAX_UNAVAILABLE)
    auto_rollback: bool = Field(default=False, description=AUTO_ROLLBACK)
    optimize: Optimize = Field(default_factory=Optimize, description=OPTIMIZE)
    traffic: list[TrafficEntry] | None = Field(default=None, description=TRAFFIC)
    shadow: ShadowSpec | None = Field(default=None, description=SHADOW)
    strategy: Strategy | None = Field(default=None, description=STRATEGY)

    @model_validator(mode="after")
    def _check(self) -> DeploymentCreate:
        if self.traffic is not None:
            _check_traffic(self.traffic)
            if self.version is not None or self.alias is not None:
                raise ValueError("give 'traffic' instead of 'version' or 'alias', not both")
        elif (self.version is None) == (self.alias is None):
            raise ValueError("give exactly one of 'version', 'alias' and 'traffic'")
        _check_device(self.device, self.gpus)
        return self


class DeploymentUpdate(BaseModel):
    """Any change of version, alias or settings makes a new revision (a rolling update)."""

    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1)
    alias: AliasName | None = None
    replicas: int | None = Field(default=None, ge=1, le=256)
    gpus: int | None = Field(default=None, ge=0, le=64)
    device: Device | None = None
    batching: Batching | None = None
    allow_pickle: bool | None = None
    max_unavailable: int | None = Field(default=None, ge=0, le=256, description=MAX_UNAVAILABLE)
    auto_rollback: bool | None = Field(default=None, description=AUTO_ROLLBACK)
    optimize: Optimize | None = Field(default=None, description=OPTIMIZE)
    traffic: list[TrafficEntry] | None = Field(default=None, description=TRAFFIC)
    shadow: ShadowSpec | None = Field(
        default=None, description=SHADOW + " (an explicit null removes it; absent keeps it)"
    )
    strategy: Strategy | None = Field(
        default=None, description=STRATEGY + " (an explicit null removes it)"
    )

    @model_validator(mode="after")
    def _check(self) -> DeploymentUpdate:
        if self.version is not None and self.alias is not None:
            raise ValueError("give at most one of 'version' and 'alias'")
        if self.traffic is not None:
            _check_traffic(self.traffic)
            if self.version is not None or self.alias is not None:
                raise ValueError("give 'traffic' instead of 'version' or 'alias', not both")
        return self


def _check_traffic(entries: list[TrafficEntry]) -> None:
    """Percents add up to 100, each version once (422 with the reason otherwise)."""
    if not entries:
        raise ValueError("traffic needs at least one version")
    total = sum(e.percent for e in entries)
    if abs(total - 100) > 1e-6:
        shares = " + ".join(f"{e.percent:g}" for e in entries)
        raise ValueError(f"traffic percents must add up to 100, not {shares} = {total:g}")
    versions = [e.version for e in entries]
    if len(set(versions)) != len(versions):
        raise ValueError(f"each version may appear once in traffic: {versions}")


class DeploymentSpec(BaseModel):
    """What a revision runs: the settings stored with it (``RevisionOut.settings``)."""

    alias: str | None = None
    replicas: int
    gpus: int
    device: Device
    batching: Batching
    allow_pickle: bool = False
    max_unavailable: int | None = None  # None: the default rule (see ``unavailable_budget``)
    auto_rollback: bool = False
    optimize: Optimize = Field(default_factory=Optimize)
    strategy: Strategy | None = None

    def unavailable_budget(self) -> int:
        """Replicas that may stop before their replacements are ready, when nothing else fits."""
        if self.max_unavailable is not None:
            return min(self.max_unavailable, self.replicas)
        return 1 if self.replicas > 1 else 0


class ReplicaOut(BaseModel):
    id: str
    deployment: str
    revision: int
    version: int
    index: int
    desired: Desired
    state: ReplicaState
    reason: str | None
    worker: str | None
    gpu_ids: list[int]
    lease_expires_at: datetime | None
    restarts: int


class Observed(BaseModel):
    version: int | None = Field(description="the newest version some ready replica serves")
    ready_replicas: int
    replicas: list[ReplicaOut]


class DeploymentOut(BaseModel):
    name: str
    model: str
    version: int | None = Field(description="the version the current revision deploys")
    alias: str | None = Field(description="the alias followed, if any")
    replicas: int
    gpus: int
    device: Device
    batching: Batching
    allow_pickle: bool
    max_unavailable: int = Field(description="the value in force (" + MAX_UNAVAILABLE + ")")
    auto_rollback: bool = Field(description=AUTO_ROLLBACK)
    optimize: Optimize = Field(default_factory=Optimize, description=OPTIMIZE)
    strategy: Strategy | None = Field(default=None, description=STRATEGY)
    revision: int
    status: DeploymentStatus
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    observed: Observed
    lanes: list[LaneOut] = Field(
        default_factory=list,
        description="the revisions taking calls now, with their role and share (a plain "
        "rolling update: the current revision alone, 100)",
    )
    canary: CanaryOut | None = Field(default=None, description="the newest canary, if any")


class RevisionOut(BaseModel):
    deployment: str
    revision: int
    version: int
    settings: dict[str, Any]
    reason: RevisionReason
    created_at: datetime
    request_id: str | None = Field(
        None, description="X-Request-ID of the request that made it (grep the logs for it)"
    )
    optimization: OptimizationReport | None = Field(
        None, description="what its newest serving process reported of `optimize`: figures"
    )
    verdict: dict[str, Any] | None = Field(
        None,
        description="for a canary revision: its outcome (promoted, rolled_back, aborted), "
        "the reason and the figures it was decided on",
    )


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_revision: int | None = Field(
        default=None, ge=1, description="default: the revision before the current one"
    )


class EndpointRegister(BaseModel):
    """Sent by a serving process when it starts (``--register-url``)."""

    url: str = Field(pattern=r"^https?://", max_length=2048)
    replica_id: str = Field(min_length=1, max_length=64)
    status: EndpointStatus = EndpointStatus.loading
    reason: str | None = Field(default=None, max_length=4096)
    optimization: OptimizationReport | None = None


class EndpointHeartbeat(BaseModel):
    status: EndpointStatus
    reason: str | None = Field(default=None, max_length=4096)
    optimization: OptimizationReport | None = None


class EndpointOut(BaseModel):
    id: str
    url: str
    status: EndpointStatus
    reason: str | None
    deployment: str
    revision: int
    version: int
    worker: str | None
    replica_id: str | None
    heartbeat_at: datetime
    optimization: OptimizationReport | None = None


class WorkerRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    host: str = Field(default="", max_length=255)
    address: str = Field(
        default="127.0.0.1", max_length=255, description="where its serving processes listen"
    )
    gpus: list[int] = Field(default_factory=list, description="GPU ids it offers")
    cpu_slots: int = Field(default=1, ge=0, le=4096, description="replicas it runs without GPU")

    @model_validator(mode="after")
    def _unique_gpus(self) -> WorkerRegister:
        if len(set(self.gpus)) != len(self.gpus) or any(g < 0 for g in self.gpus):
            raise ValueError("gpus must be distinct non-negative ids")
        return self


class WorkerOut(BaseModel):
    id: str
    name: str
    host: str
    address: str
    gpus: list[int]
    cpu_slots: int
    registered_at: datetime
    heartbeat_at: datetime
    live: bool
    lease_ttl_s: float
    heartbeat_s: float


class ReplicaReport(BaseModel):
    replica_id: str
    state: ReplicaState
    reason: str | None = Field(default=None, max_length=4096)
    restarts: int = Field(default=0, ge=0)


class WorkerHeartbeat(BaseModel):
    replicas: list[ReplicaReport] = Field(default_factory=list)


class AssignmentFile(BaseModel):
    path: str
    size: int
    sha256: str
    url: str = Field(description="absolute download URL on the control plane")


class Assignment(BaseModel):
    replica_id: str
    deployment: str
    revision: int
    desired: Desired
    model: str
    version: int
    format: str | None
    files: list[AssignmentFile]
    signature: dict[str, Any] | None
    device: Device
    gpu_ids: list[int]
    batching: Batching
    allow_pickle: bool
    optimize: Optimize = Field(default_factory=Optimize)
    request_id: str | None = Field(
        None,
        description="X-Request-ID of the request that made the deployment's newest revision "
        "(the rollout this replica's actions belong to): workers and serving processes log it",
    )


class Assignments(BaseModel):
    assignments: list[Assignment]


# --- API keys (security) -------------------------------------------------------------------


class Scope(StrEnum):
    """What a key may do. `admin` may do everything; `write`, `deploy` and `promote` may
    also read; `worker` is only for deployer workers and serving processes; `gateway` only
    for gateway processes (`python -m gateway`: the route feed, key checks, traffic reports)."""

    read = "read"
    write = "write"
    deploy = "deploy"
    promote = "promote"
    admin = "admin"
    worker = "worker"
    gateway = "gateway"


# `*` and `?` over model names, e.g. `team-a-*`
ModelGlob = Annotated[str, StringConstraints(pattern=r"^[a-z0-9._*?-]{1,63}$")]
KeyLabel = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: KeyLabel
    scopes: list[Scope] = Field(min_length=1, max_length=6)
    owner: KeyLabel | None = Field(
        default=None, description="who the key is for (default: the creating key's name)"
    )
    model_globs: list[ModelGlob] = Field(
        default_factory=list,
        max_length=32,
        description="restrict the key to models whose name matches one of these globs",
    )
    expires_at: datetime | None = Field(default=None, description="no expiry when absent")

    @model_validator(mode="after")
    def _aware(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a timezone (e.g. 2027-01-01T00:00:00Z)")
        return self


class KeyOut(BaseModel):
    id: str
    name: str
    owner: str
    prefix: str = Field(description="the token's first characters, to tell keys apart")
    scopes: list[Scope]
    model_globs: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyOut):
    token: str = Field(description="the secret, shown this once: `Authorization: Bearer mp_…`")


# -- operations: webhooks, garbage collection ----------------------------------------------


class WebhookEvent(StrEnum):
    version_ready = "version.ready"
    alias_moved = "alias.moved"
    deployment_revision_created = "deployment.revision_created"
    rollout_finished = "rollout.finished"
    rollout_failed = "rollout.failed"
    endpoint_unhealthy = "endpoint.unhealthy"
    canary_promoted = "canary.promoted"
    canary_rolled_back = "canary.rolled_back"  # a threshold breached, or never ready in time


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[
        str, StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2048)
    ] = Field(description="where events are POSTed (http or https)")
    events: list[WebhookEvent] = Field(min_length=1, description="event types to receive")
    description: str = Field("", max_length=2000)
    secret: Annotated[str, StringConstraints(min_length=16, max_length=128)] | None = Field(
        None, description="HMAC-SHA256 key for the signatures (default: generated, shown once)"
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[WebhookEvent]
    description: str
    created_by: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret; shown only in this answer")


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str
    event_id: str
    type: WebhookEvent
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict[str, Any]


class GcBlob(BaseModel):
    sha256: str
    size: int
    modified: datetime


class GcUpload(BaseModel):
    key: str = Field(description="the temporary key the parts were going to")
    upload_id: str | None = Field(description="None: a leftover temporary object")
    created_at: datetime


class GcReport(BaseModel):
    dry_run: bool
    skipped: bool = Field(
        False, description="another control-plane replica was sweeping: nothing was done"
    )
    blobs: list[GcBlob] = Field(description="unreferenced blobs removed (or to remove)")
    bytes: int = Field(description="their total size")
    uploads: list[GcUpload] = Field(
        description="abandoned direct uploads past the TTL aborted (or to abort)"
    )
    kept_recent: int = Field(description="unreferenced blobs kept: younger than the grace period")
