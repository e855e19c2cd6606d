"""The worker's serving settings cross the process boundary as data and arrive unchanged.

The executor builds a `ServingSpec` for an assignment and hands it over as JSON: on a warm
spare's stdin, or in MODELPLANE_SERVING_SETTINGS_JSON for a cold `python -m serving`. Each
serving process logs the settings it runs with; they must equal what the worker sent. The
same spec written as flags (`python -m serving --help` lists them) parses to the same
settings, so a person can start by hand exactly the process a worker would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic_settings import CliApp

from bench.harness import REPO, SIGNATURE, base_env, push_version, torchscript_bytes
from contract.serving import SETTINGS_ENV, ServingSpec
from deployer.client import ControlPlane
from deployer.contract import Assignment, FileRef
from deployer.executor import Executor
from deployer.plan import Pull, Start, Stop
from deployer.settings import WorkerSettings
from serving.settings import ServingSettings

MODEL = "settings-plus5"


@pytest.fixture(scope="module")
def model_bytes(embedded: str, admin_token: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = torchscript_bytes(5.0, tmp_path_factory.mktemp("model") / "m.pt")
    push_version(embedded, MODEL, {"model.pt": data}, "torchscript", admin_token)
    return data


def assignment(rid: str, data: bytes) -> Assignment:
    url = f"/api/v1/models/{MODEL}/versions/1/files/model.pt"
    ref = FileRef(path="model.pt", size=len(data), sha256=hashlib.sha256(data).hexdigest(), url=url)
    return Assignment.model_validate(
        {
            "replica_id": rid,
            "deployment": MODEL,
            "revision": 1,
            "desired": "run",
            "model": MODEL,
            "version": 1,
            "format": "torchscript",
            "files": [ref.model_dump()],
            "signature": SIGNATURE,
            "device": "auto",
            "gpu_ids": [],
            "batching": {"max_batch_size": 4, "max_delay_ms": 1.5},
            "allow_pickle": False,
            "request_id": "rid-settings-test",
        }
    )


MakeExecutor = Callable[[bool], Executor]


@pytest.fixture
def make_executor(embedded: str, worker_token: str, tmp_path: Path) -> Iterator[MakeExecutor]:
    made: list[Executor] = []

    def make(warm_spare: bool) -> Executor:
        settings = WorkerSettings(
            control_plane=embedded,
            cache_dir=tmp_path / f"cache-{len(made)}",
            drain_timeout_s=10,
            cpu_slots=1,
            warm_spare=warm_spare,
        )
        made.append(Executor(settings, ControlPlane(embedded, token=worker_token)))
        return made[-1]

    try:
        yield make
    finally:
        for executor in made:
            executor.shutdown(10)


def drive(executor: Executor, until: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.observe(time.monotonic())
        if until():
            return
        time.sleep(0.1)
    logs = "\n".join(p.read_text()[-3000:] for p in executor.logs.glob("*.log"))
    raise AssertionError(f"timed out; reports {executor.reports(time.monotonic())}\n{logs}")


def running_settings(log_path: Path) -> ServingSpec:
    """The settings a serving process logged it starts with (JSON log lines: not a TTY)."""
    prefix = "starting with settings "
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            message = str(json.loads(line).get("message", ""))
            if message.startswith(prefix):
                return ServingSpec.model_validate_json(message.removeprefix(prefix))
    raise AssertionError(f"no settings line in {log_path}:\n{log_path.read_text()[-3000:]}")


def start_and_check(executor: Executor, a: Assignment) -> Path:
    rid = a.replica_id
    executor.apply(Pull(a), time.monotonic())
    drive(executor, lambda: executor.replicas[rid].state.pulled)
    executor.apply(Start(a), time.monotonic())
    replica = executor.replicas[rid]
    drive(executor, lambda: replica.ready)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"http://127.0.0.1:{replica.port}/v2/models/{MODEL}/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [6, 7, 8, 9]

    assert replica.spec is not None and replica.log_path is not None
    assert running_settings(replica.log_path) == replica.spec
    assert replica.spec.request_id == "rid-settings-test"
    assert (replica.spec.max_batch_size, replica.spec.max_delay_ms) == (4, 1.5)
    assert replica.spec.sha256_verified and replica.spec.port == replica.port
    executor.apply(Stop(rid), time.monotonic())
    drive(executor, lambda: not replica.state.running, timeout=30)
    return replica.log_path


def test_a_warm_spare_runs_with_exactly_the_settings_the_worker_sent(
    make_executor: MakeExecutor, model_bytes: bytes
) -> None:
    executor = make_executor(True)
    log_path = start_and_check(executor, assignment("spare-1", model_bytes))
    assert log_path.name.startswith("serving-"), "started cold, not from the warm spare"


def test_a_cold_start_runs_with_exactly_the_settings_the_worker_sent(
    make_executor: MakeExecutor, model_bytes: bytes
) -> None:
    executor = make_executor(False)
    log_path = start_and_check(executor, assignment("cold-1", model_bytes))
    assert log_path.name == "cold-1.log"


def test_the_same_settings_as_flags_parse_to_the_same_spec(
    make_executor: MakeExecutor, model_bytes: bytes, tmp_path: Path
) -> None:
    """What a worker sends, a person can type: every flag is in `--help`, and they parse
    (by the serving process's own CLI) to the spec the worker would send."""
    executor = make_executor(False)
    spec = executor.serving_spec(assignment("flags-1", model_bytes), tmp_path / "m.pt", 20001)
    argv = CliApp.serialize(spec, list_style="argparse")
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--help"],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    flags = {arg for arg in argv if arg.startswith("--")}
    listed = set(done.stdout.replace(",", " ").split())
    assert flags <= listed, f"not in --help: {sorted(flags - listed)}"
    assert CliApp.run(ServingSettings, cli_args=argv).spec() == spec


def test_a_spec_in_the_environment_loses_to_flags_and_refuses_unknown_keys(
    tmp_path: Path,
) -> None:
    spec = ServingSpec.model_validate({"name": "m", "format": "torchscript", "path": "m.pt"})
    env = {**base_env(), SETTINGS_ENV: spec.model_dump_json()}
    given = run_serving(["--port", "not-a-port"], env)
    assert given.returncode == 2 and "port" in given.stderr  # the flag was read, and won
    bad = {**env, SETTINGS_ENV: json.dumps({**spec.model_dump(mode="json"), "colour": "red"})}
    refused = run_serving([], bad)
    assert refused.returncode == 2 and "colour" in refused.stderr, refused.stderr


def run_serving(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
