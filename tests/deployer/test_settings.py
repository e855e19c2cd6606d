"""Worker settings: flags and MODELPLANE_WORKER_* are one object; bad values say why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bench.harness import REPO, base_env
from deployer.settings import WorkerSettings


def test_gpus_ports_and_cpu_slots() -> None:
    settings = WorkerSettings(control_plane="http://cp:8000/", gpus="0, 2", port_range="100-102")
    assert settings.control_plane == "http://cp:8000"
    assert settings.gpu_ids() == [0, 2]
    assert list(settings.ports) == [100, 101, 102]
    assert settings.cpu_slots == (os.cpu_count() or 1)
    assert WorkerSettings(control_plane="x", gpus="").gpu_ids() == []


def test_bad_port_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="port range must be A-B"):
        WorkerSettings(control_plane="x", port_range="9-1")


def test_environment_settings_and_exit_code_for_bad_ones() -> None:
    env = {
        **base_env(),
        "MODELPLANE_WORKER_CONTROL_PLANE": "http://cp",
        "MODELPLANE_WORKER_CPU_SLOTS": "-1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "deployer"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"cpu_slots" in done.stderr
