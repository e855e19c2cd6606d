"""`plan()` rules, without processes: what runs, what restarts when, what drains and dies."""

from __future__ import annotations

from deployer.contract import Assignment, FileRef
from deployer.plan import Fail, Forget, Kill, Policy, ProcessState, Pull, Restart, Start, Stop, plan

DIGEST = "a" * 64
POLICY = Policy(max_restarts=3, drain_timeout_s=10.0)


def assignment(rid: str = "r1", desired: str = "run") -> Assignment:
    return Assignment.model_validate(
        {
            "replica_id": rid,
            "deployment": "iris",
            "revision": 1,
            "desired": desired,
            "model": "iris",
            "version": 1,
            "format": "torchscript",
            "files": [FileRef(path="model.pt", size=3, sha256=DIGEST, url="/f").model_dump()],
            "signature": None,
            "device": "auto",
            "gpu_ids": [],
            "batching": {},
            "allow_pickle": False,
        }
    )


def test_new_assignment_is_pulled_first() -> None:
    a = assignment()
    assert plan([a], {}, now=0.0, policy=POLICY) == [Pull(a)]


def test_pulled_replica_starts_once() -> None:
    a = assignment()
    assert plan([a], {"r1": ProcessState(pulled=True)}, 0.0, POLICY) == [Start(a)]
    running = ProcessState(pulled=True, pid=42)
    assert plan([a], {"r1": running}, 0.0, POLICY) == []


def test_nothing_while_pulling() -> None:
    assert plan([assignment()], {"r1": ProcessState(pulling=True)}, 0.0, POLICY) == []


def test_backoff_doubles_and_caps() -> None:
    policy = Policy()
    assert [policy.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_crashed_process_restarts_after_its_backoff() -> None:
    a = assignment()
    crashed = ProcessState(pulled=True, exited_at=100.0, crashes=3, exit_reason="exited with 1")
    assert plan([a], {"r1": crashed}, 103.9, POLICY) == []  # 3rd crash: 4 s
    assert plan([a], {"r1": crashed}, 104.0, POLICY) == [Restart(a, attempt=3)]


def test_crash_loop_past_max_restarts_fails_with_the_last_reason() -> None:
    a = assignment()
    looping = ProcessState(pulled=True, exited_at=0.0, crashes=4, exit_reason="exited with 1: oom")
    assert plan([a], {"r1": looping}, 1000.0, POLICY) == [
        Fail("r1", "crashed 4 times; last: exited with 1: oom")
    ]


def test_failed_replica_stays_failed() -> None:
    failed = ProcessState(failed_reason="sha256 mismatch for model.pt")
    assert plan([assignment()], {"r1": failed}, 0.0, POLICY) == []


def test_failed_pull_is_retried_after_backoff() -> None:
    a = assignment()
    state = ProcessState(exited_at=10.0, crashes=1, exit_reason="pull failed: timeout")
    assert plan([a], {"r1": state}, 10.5, POLICY) == []
    assert plan([a], {"r1": state}, 11.0, POLICY) == [Pull(a)]


def test_desired_stop_drains_then_kills_after_the_timeout() -> None:
    a = assignment(desired="stop")
    assert plan([a], {"r1": ProcessState(pulled=True, pid=7)}, 0.0, POLICY) == [Stop("r1")]
    draining = ProcessState(pulled=True, pid=7, stopping_since=5.0)
    assert plan([a], {"r1": draining}, 14.9, POLICY) == []
    assert plan([a], {"r1": draining}, 15.0, POLICY) == [Kill("r1")]


def test_stopped_replica_is_kept_while_assigned_and_forgotten_after() -> None:
    stopped = ProcessState(pulled=True, exited_at=None)
    assert plan([assignment(desired="stop")], {"r1": stopped}, 0.0, POLICY) == []
    assert plan([], {"r1": stopped}, 0.0, POLICY) == [Forget("r1")]


def test_unassigned_running_replica_is_stopped() -> None:
    """A lease taken away (the control plane gave the slot elsewhere) stops the process."""
    assert plan([], {"r9": ProcessState(pulled=True, pid=3)}, 0.0, POLICY) == [Stop("r9")]


def test_unassigned_pull_finishes_before_it_is_forgotten() -> None:
    assert plan([], {"r9": ProcessState(pulling=True)}, 0.0, POLICY) == []


def test_rollout_starts_new_beside_old_and_stops_old_only_when_told() -> None:
    old, new = assignment("old"), assignment("new")
    actual = {"old": ProcessState(pulled=True, pid=1)}
    assert plan([old, new], actual, 0.0, POLICY) == [Pull(new)]
    retire = assignment("old", desired="stop")
    actual["new"] = ProcessState(pulled=True, pid=2)
    assert plan([retire, new], actual, 1.0, POLICY) == [Stop("old")]
