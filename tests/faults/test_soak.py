"""The CI-sized soak (``bench/soak.py``): 60 s of uploads, alias moves, deployment updates
and rollbacks, inference through the stable URL, and kill -9 of serving processes, workers
and the control plane every ~15 s; then the consistency audit must pass and no call may
have been answered 500."""

from __future__ import annotations

import os

import pytest

from bench.soak import run_soak
from tests.faults.conftest import need_postgres

DURATION = float(os.environ.get("MODELPLANE_TEST_SOAK_S", "60"))


@pytest.mark.timeout(DURATION + 360)
def test_soak_with_random_kills_stays_consistent() -> None:
    need_postgres()
    report = run_soak(DURATION, kill_every=15, seed=int(os.environ.get("SOAK_SEED", "8")))
    assert report.server_errors == [], report.server_errors[:5]
    assert report.consistent, report.problems[:10]
    assert report.ops["version.finalize"] > 0 and report.ops["alias.move"] > 0
    assert report.calls > 0
    assert report.audit.get("files re-hashed", 0) > 0 and report.audit.get("blobs re-hashed", 0) > 0
