"""What the worker should do next: a pure function of what is wanted and what runs.

`plan(desired, actual, now)` looks at the assignments the control plane answered and at the
observed state of every replica this worker knows, and returns the actions that bring the two
together. It does no I/O and reads no clock, so every rule (backoff, crash loop, drain then
kill) is unit-tested without processes; `deployer.executor` carries the actions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.contract import Assignment

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0


@dataclass(frozen=True)
class Policy:
    max_restarts: int = 5  # crashes of one replica before it is reported failed
    crash_reset_s: float = 60.0  # ready this long forgives earlier crashes
    drain_timeout_s: float = 30.0  # SIGTERM → SIGKILL
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S

    def backoff(self, crashes: int) -> float:
        """Delay before the restart that follows the `crashes`-th crash: 1 s, 2 s, 4 s … 30 s."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** max(0, crashes - 1))


@dataclass(frozen=True)
class ProcessState:
    """What the executor observed of one replica (`pid` is None when no process runs)."""

    pulling: bool = False
    pulled: bool = False
    pid: int | None = None
    stopping_since: float | None = None  # when SIGTERM was sent
    exited_at: float | None = None
    exit_reason: str | None = None  # "exited with code 1: <last stderr line>"
    crashes: int = 0  # exits while wanted, since a start stayed ready for crash_reset_s
    failed_reason: str | None = None  # terminal: bad sha256, crash loop

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class Pull:
    assignment: Assignment


@dataclass(frozen=True)
class Start:
    assignment: Assignment


@dataclass(frozen=True)
class Restart:
    assignment: Assignment
    attempt: int


@dataclass(frozen=True)
class Stop:
    """SIGTERM: the serving process drains, deregisters and exits."""

    replica_id: str


@dataclass(frozen=True)
class Kill:
    """SIGKILL after the drain timeout."""

    replica_id: str


@dataclass(frozen=True)
class Fail:
    replica_id: str
    reason: str


@dataclass(frozen=True)
class Forget:
    """Drop an unassigned replica whose process is gone (its cache pins and directory)."""

    replica_id: str


Action = Pull | Start | Restart | Stop | Kill | Fail | Forget


@dataclass(frozen=True)
class _Desired:
    run: dict[str, Assignment] = field(default_factory=dict)
    stop: set[str] = field(default_factory=set)


def plan(
    desired: list[Assignment],
    actual: dict[str, ProcessState],
    now: float,
    policy: Policy = Policy(),
) -> list[Action]:
    wanted = _Desired()
    for assignment in desired:
        if assignment.desired == "run":
            wanted.run[assignment.replica_id] = assignment
        else:
            wanted.stop.add(assignment.replica_id)
    actions: list[Action] = []
    for replica_id, assignment in wanted.run.items():
        actions += _keep_running(assignment, actual.get(replica_id), now, policy)
    for replica_id, state in actual.items():
        if replica_id not in wanted.run:
            actions += _wind_down(
                replica_id, state, now, policy, assigned=replica_id in wanted.stop
            )
    return actions


def _keep_running(
    assignment: Assignment, state: ProcessState | None, now: float, policy: Policy
) -> list[Action]:
    if state is None:
        return [Pull(assignment)]
    if state.failed_reason is not None or state.pulling or state.running:
        return []
    if state.exited_at is not None:  # the last pull or process failed: crash loop or backoff
        if state.crashes > policy.max_restarts:
            reason = f"crashed {state.crashes} times; last: {state.exit_reason}"
            return [Fail(assignment.replica_id, reason)]
        if now < state.exited_at + policy.backoff(state.crashes):
            return []
    if not state.pulled:
        return [Pull(assignment)]
    if state.exited_at is None:
        return [Start(assignment)]
    return [Restart(assignment, attempt=state.crashes)]


def _wind_down(
    replica_id: str, state: ProcessState, now: float, policy: Policy, *, assigned: bool
) -> list[Action]:
    if state.running:
        if state.stopping_since is None:
            return [Stop(replica_id)]
        if now >= state.stopping_since + policy.drain_timeout_s:
            return [Kill(replica_id)]
        return []
    if state.pulling or assigned:
        return []  # a pull finishes before its files are let go; a stopped replica is reported
    return [Forget(replica_id)]
