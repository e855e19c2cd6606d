"""`modelplane deploy --traffic/--shadow/--canary` and `modelplane canary status|promote|abort`
against `modelplane up` (its control plane, worker and serving processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.harness import wait_for
from client import Client
from tests.client.conftest import Up, unique
from tests.client.test_cli import run, run_json
from tests.client.test_sdk import Mlp, delete_and_wait

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")


def pushed(sdk: Client, name: str, count: int) -> None:
    for seed in range(count):
        sdk.push_module(name, Mlp(seed), torch.zeros(2, 4))


def lanes(d: dict[str, Any]) -> list[tuple[int, str, float]]:
    return sorted((lane["version"], lane["role"], lane["percent"]) for lane in d["lanes"])


def canary_state(up: Up, name: str, *states: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        c: dict[str, Any] = run_json(up, "canary", "status", name)
        return c if c["state"] in states else None

    found: dict[str, Any] = wait_for(f"{name}'s canary {states}", reached, 120, up.logs)
    return found


def test_a_split_and_a_shadow_from_the_command_line(up: Up) -> None:
    name = unique("split")
    with up.client() as sdk:
        pushed(sdk, name, 3)
        try:
            d = run_json(up, "deploy", name, "--traffic", "1=90,2=10", "--no-wait")
            assert lanes(d) == [(1, "primary", 90), (2, "split", 10)]
            d = run_json(up, "deploy", name, "--shadow", "3=20", "--no-wait")
            assert lanes(d) == [(1, "primary", 90), (2, "split", 10), (3, "shadow", 20)]
            shown = run(up, "deployments", "show", name).stdout
            assert "90% " in shown and "10% " in shown and "20% mirrored" in shown
            assert "█" in shown  # each lane's share as a bar
            d = run_json(up, "deploy", name, "--shadow", "none", "--no-wait")
            assert lanes(d) == [(1, "primary", 90), (2, "split", 10)]
        finally:
            delete_and_wait(sdk, name, up)


def test_bad_traffic_flags_fail_with_the_reason(up: Up) -> None:
    name = unique("bad")
    with up.client() as sdk:
        pushed(sdk, name, 2)
    cases = [
        (["--traffic", "1=90,2=20"], "must add up to 100"),
        (["--traffic", "1:90"], "give VERSION=PERCENT"),
        (["--traffic", "1=50,1=50"], "names a version twice"),
        (["--version", "1", "--canary-interval", "5"], "--canary-interval goes with --canary"),
        (["--version", "1", "--canary", "50,10"], "must increase"),
    ]
    for flags, message in cases:
        result = run(up, "deploy", name, *flags, "--no-wait", code=1)
        assert message in " ".join(result.stderr.split()), (flags, result.stderr)
    result = run(up, "canary", "status", name, code=1)
    assert "not found" in result.stderr.lower() or "no canary" in result.stderr


def test_a_canary_from_deploy_to_status_abort_and_promote(up: Up, tmp_path: Path) -> None:
    name = unique("canary")
    with up.client() as sdk:
        pushed(sdk, name, 2)
        try:
            run(up, "deploy", name, "--version", "1", "--timeout", "120")
            text = run(
                up, "deploy", name, "--version", "2", "--canary", "10,50,100",
                "--canary-interval", "60", "--max-error-rate", "0.01", "--max-p99-ms", "250",
                "--min-calls", "200",
            ).stdout  # fmt: skip
            assert "canary revision 2 (v2) over 1 (v1)" in " ".join(text.split())
            spec = run_json(up, "canary", "status", name)["spec"]
            assert spec["steps"] == [10, 50, 100] and spec["interval_s"] == 60
            assert (spec["max_error_rate"], spec["max_p99_ms"], spec["min_calls"]) == (
                0.01,
                250,
                200,
            )

            running = canary_state(up, name, "running")
            assert (running["step"], running["percent"], running["version"]) == (0, 10, 2)
            status = " ".join(run(up, "canary", "status", name).stdout.split())
            assert "running, step 1/3 at 10%" in status and "steps [10] → 50 → 100" in status
            assert "errors ≤ 1.00%, p99 ≤ 250 ms, ≥ 200 calls a step" in status

            aborted = run_json(up, "canary", "abort", name)
            assert aborted["canary"]["state"] == "aborted"
            assert [lane["version"] for lane in aborted["lanes"]] == [1]
            assert "aborted" in run(up, "canary", "status", name).stdout
            again = run(up, "canary", "abort", name, code=1)
            assert "409" in again.stderr

            run(up, "deploy", name, "--version", "2", "--canary", "20,100")
            canary_state(up, name, "waiting", "running")
            promoted = run_json(up, "canary", "promote", name)
            assert promoted["canary"]["state"] == "promoted" and promoted["version"] == 2

            def settled() -> bool:  # the old primary serves until v2's replica is ready
                return lanes(run_json(up, "deployments", "show", name)) == [(2, "primary", 100)]

            wait_for(f"{name} on v2 alone", settled, 120, up.logs)
            np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
            for flags in ([], ["--direct"], ["--direct", "--version", "2"]):
                answer = run_json(up, "infer", name, "-i", str(tmp_path / "x.npy"), *flags)
                assert answer["output0"]["shape"] == [2, 3], flags
            result = run(
                up,
                "infer",
                name,
                "-i",
                str(tmp_path / "x.npy"),
                "--version",
                "1",
                "--direct",
                code=1,
            )
            assert "does not serve version 1 (served: v2)" in result.stderr
        finally:
            delete_and_wait(sdk, name, up)
