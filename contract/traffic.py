"""Traffic: how a deployment's calls are shared between its live revisions, what the gateway
routes by, what it counts, and what the control plane decides a canary on.

Three parties share these shapes:
- the control plane (``registry/``) keeps a deployment's ``lanes`` (which revision gets which
  share, in which role), its canary's state, and the counts gateways report;
- every gateway (``gateway/``) follows a ``RouteFeed`` (the route table plus revoked keys),
  routes each call by it, and reports ``TrafficReport``s of what it saw, per revision;
- the dashboard and the SDK read ``TrafficSeries`` and ``Route``.
"""

from __future__ import annotations

import bisect
import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

VERSION_HEADER = "modelplane-version"  # pins a call to one version: ``Modelplane-Version: 8``


class LaneRole(StrEnum):
    primary = "primary"  # the deployment's current revision
    split = "split"  # type: ignore[assignment]  # (str.split) a version kept live, fixed share
    canary = "canary"  # a new revision taking a growing share, gated by its counts
    shadow = "shadow"  # mirrored calls: answers dropped, compared with the primary's


Percent = Annotated[float, Field(ge=0, le=100)]


# ---- what a deployment asks for (DeploymentCreate / DeploymentUpdate) ----


class TrafficEntry(BaseModel):
    """One version of a fixed split."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    percent: Percent
    replicas: int | None = Field(
        default=None, ge=1, le=256, description="default: the deployment's replicas"
    )


class ShadowSpec(BaseModel):
    """Mirror ``percent`` of calls to ``version``; the caller only ever sees the primary."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    percent: Annotated[float, Field(gt=0, le=100)]
    replicas: int = Field(default=1, ge=1, le=256)


class CanarySpec(BaseModel):
    """Steps of the new revision's share; each ``interval_s`` the gateways' counts decide."""

    model_config = ConfigDict(extra="forbid")
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100], min_length=1
    )
    interval_s: float = Field(default=60, ge=1, le=86_400)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0)
    min_calls: int = Field(
        default=100, ge=1, description="fewer calls in a step: the step waits for more"
    )
    ready_timeout_s: float = Field(
        default=600, ge=1, description="rolled back if the new revision is not ready by then"
    )

    @model_validator(mode="after")
    def _check(self) -> CanarySpec:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"canary steps must increase: {self.steps}")
        if self.steps[-1] != 100:
            self.steps = [*self.steps, 100]  # the last step promotes
        return self


class Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    canary: CanarySpec | None = None


# ---- what the control plane holds and shows ----


class CanaryState(StrEnum):
    waiting = "waiting"  # the new revision is not ready yet: it takes no traffic
    running = "running"
    promoted = "promoted"
    rolled_back = "rolled_back"  # a threshold was breached, or never ready in time
    aborted = "aborted"  # by request


class Figures(BaseModel):
    """What a verdict was decided on: the revision's calls over the window."""

    calls: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


class CanaryOut(BaseModel):
    revision: int
    version: int
    base_revision: int
    base_version: int
    spec: CanarySpec
    step: int = Field(description="index into spec.steps")
    percent: float = Field(description="the canary's share now")
    state: CanaryState
    started_at: datetime
    step_started_at: datetime | None
    reason: str | None = Field(description="why it was promoted, rolled back or aborted")
    figures: Figures | None = Field(description="the counts the last verdict was decided on")
    base_figures: Figures | None = None


class LaneOut(BaseModel):
    revision: int
    version: int
    role: LaneRole
    percent: float


# ---- what the gateway routes by (the route feed) ----


class Lane(BaseModel):
    revision: int
    version: int
    role: LaneRole
    percent: float = Field(description="share of unpinned calls; for the shadow, mirrored share")
    endpoints: list[str] = Field(description="ready URLs of this revision's serving processes")


class Route(BaseModel):
    """A deployment as a gateway sees it. Unpinned calls are shared between the non-shadow
    lanes by ``percent`` (a lane without endpoints gives its share to the others); pinned
    calls go to the lanes of their version only."""

    deployment: str
    model: str
    lanes: list[Lane]

    def versions(self) -> list[int]:
        return sorted({lane.version for lane in self.lanes if lane.endpoints})


class KeyGrant(BaseModel):
    """What a gateway keeps of a verified API key (never the token): by the token's sha256."""

    key_id: str | None
    name: str
    scopes: list[str]
    model_globs: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None


class KeyCheck(BaseModel):
    """``POST /gateway/keys:verify`` body."""

    token: str


class RouteFeed(BaseModel):
    """``GET /gateway/routes?since=CURSOR``: answered when the table differs from CURSOR (or
    after ``wait_s``, unchanged). ``revoked_keys``: ids of keys revoked or expired; a gateway
    forgets their grants at once."""

    cursor: str
    auth: bool
    routes: list[Route]
    revoked_keys: list[str] = Field(default_factory=list)


# ---- what a gateway counts and reports ----

# Latency histogram bucket upper bounds in ms: 0.1 ms to ~60 s, 10% apart (a p99 read off
# it is within 10% of the true one), then +inf.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(0.1 * 1.1**k, 4) for k in range(int(math.log(600_000) / math.log(1.1)) + 1)
)
BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over ``LATENCY_BOUNDS_MS``, interpolated
    inside its bucket; ``None`` for no calls."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = LATENCY_BOUNDS_MS[i - 1] if i > 0 else 0.0
            high = LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else low * 1.1
            return low + (high - low) * max(0.0, rank - seen) / n
        seen += n
    return LATENCY_BOUNDS_MS[-1]


class RevisionCounts(BaseModel):
    """One gateway's counts for one revision over one report's window. ``errors``: 5xx
    answers and calls no endpoint answered. Shadow fields count mirrored calls."""

    deployment: str
    revision: int
    calls: int = 0
    errors: int = 0
    latency: list[int] = Field(
        default_factory=list, description="counts per LATENCY_BOUNDS_MS bucket (+inf last)"
    )
    shadow_calls: int = 0
    shadow_errors: int = 0
    shadow_compared: int = 0
    shadow_disagreements: int = 0
    shadow_dropped: int = 0


class TrafficReport(BaseModel):
    """``POST /gateway/reports``: a gateway's counts since its last report."""

    gateway: str
    started_at: datetime
    ended_at: datetime
    counts: list[RevisionCounts]


# ---- what the dashboard draws ----


class SeriesPoint(BaseModel):
    t: datetime
    calls_per_s: float
    error_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


class RevisionSeries(BaseModel):
    revision: int
    version: int
    role: LaneRole | None = Field(description="its lane now; None once it is no longer live")
    points: list[SeriesPoint]
    shadow_calls: int = 0
    shadow_disagreements: int = 0
    shadow_dropped: int = 0
    shadow_errors: int = 0
    shadow_compared: int = Field(
        default=0, description="mirrored calls whose answer was compared with the primary's"
    )


class TrafficSeries(BaseModel):
    """``GET /deployments/{name}/traffic?minutes=15``."""

    deployment: str
    bucket_s: float
    since: datetime
    lanes: list[LaneOut]
    canary: CanaryOut | None
    revisions: list[RevisionSeries]
