"""Fixtures shared by every test package: one SeaweedFS per session, stores on fresh buckets."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.seaweed import SeaweedServer
from storage import ArtifactStore, FileSystemArtifactStore, S3ArtifactStore


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    with SeaweedServer() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_client(seaweed: SeaweedServer) -> Any:
    return seaweed.client()


@pytest.fixture
def s3_bucket(seaweed_client: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:20]}"
    seaweed_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(seaweed_client: Any, s3_bucket: str) -> S3ArtifactStore:
    return S3ArtifactStore(seaweed_client, s3_bucket, "mp")


@pytest.fixture
def fs_store(tmp_path: Path) -> FileSystemArtifactStore:
    return FileSystemArtifactStore(tmp_path / "artifacts")


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.system)])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


# -- tiers ------------------------------------------------------------------------------------
# Every test gets one tier (pyproject.toml registers the markers; `make test-fast` runs
# `(unit or api) and not slow and not postgres`, `postgres` marking the registry's tests
# on Postgres, whose twins on SQLite it runs):
#   unit    our code alone, in this process;
#   api     in-process through the HTTP API or against the database (ASGI, SQLite, Postgres);
#   system  real processes: ours (control planes, workers, serving), SeaweedFS, pip, a browser.
# An explicit marker wins; else a test in a directory of real processes is `system`, a test
# using a fixture that starts one is `system`, one using an app or database fixture is `api`.
# A `unit` or `api` test that starts a process fails (see `no_process_outside_system`), so a
# new fixture that starts one is found and listed below at once.

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "api", "system")
SYSTEM_DIRECTORIES = frozenset({"e2e", "faults", "system", "ui"})
# Fixtures that start a process, as module.name of their definition.
SYSTEM_FIXTURES = frozenset(
    {
        "tests.conftest.seaweed",
        "tests.client.conftest.up",
        "tests.client.conftest.s3_plane",
        "tests.deployer.conftest.embedded",
        "tests.serving.conftest.servers",
        "tests.serving.conftest.start_server",
        "tests.serving.test_pipeline.served",
        "tests.serving.test_runtime_contract.running",
        "tests.serving.test_torchscript_unsigned.unsigned",
        "tests.registry.test_deploy_serve.plane",
        "tests.registry.test_serve_protocols.plane",
        "tests.registry.test_fuzz.server",
        "tests.registry.test_server.server",
        "tests.registry.test_gc.gc_store",  # SeaweedFS with Postgres
    }
)
# Fixtures of the in-process control plane and its peers.
API_FIXTURES = frozenset(
    {
        "tests.registry.conftest.database_url",
        "tests.registry.conftest.sessions",
        "tests.registry.conftest.client",
    }
)
# Tests that start a process without such a fixture: node id prefixes.
SYSTEM_TESTS = (
    "tests/infra/test_stack.py",
    "tests/serving/test_process.py",
    "tests/infra/test_compose.py::test_entry_point_used_by_compose_runs",
    "tests/deployer/test_settings.py::test_environment_settings_and_exit_code_for_bad_ones",
    "tests/deployer/test_serving_settings.py::test_a_spec_in_the_environment_loses_to_flags",
    "tests/registry/security/test_auth.py::test_offline_cli_mints_a_working_key",
)
# Tests that take more than a few seconds on an idle machine whatever their tier.
SLOW_DIRECTORIES = frozenset({"faults"})
SLOW_TESTS = (
    "tests/registry/test_fuzz.py",
    "tests/e2e/test_multihost.py",
    "tests/e2e/test_rollout_no_room.py",
    "tests/storage/test_faults.py",  # S3 faults waited out: throttling, timeouts, backoff
    "tests/serving/test_runtime_contract.py::test_unload_lets_the_model_go",  # builds every model
    "tests/registry/test_hf_versions.py::test_a_sharded_llama_directory",  # builds a Llama
)


def _fixtures(item: pytest.Item) -> set[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return set()
    return {
        f"{definition.func.__module__}.{name}"
        for name, definitions in info.name2fixturedefs.items()
        for definition in definitions
    }


def tier_of(item: pytest.Item) -> str:
    explicit = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
    if explicit:
        return explicit[-1]  # the widest, should a test and its module disagree
    parts = Path(item.path).relative_to(TESTS).parts
    if parts[0] in SYSTEM_DIRECTORIES or item.nodeid.startswith(SYSTEM_TESTS):
        return "system"
    fixtures = _fixtures(item)
    if fixtures & SYSTEM_FIXTURES:
        return "system"
    return "api" if fixtures & API_FIXTURES else "unit"


def on_postgres(item: pytest.Item) -> bool:
    """The test runs against the shared Postgres (the registry's tests run on SQLite and
    on Postgres: the same code path, twice)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("database_url") == "postgres" or "postgres_url" in getattr(
        item, "fixturenames", ()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
        if on_postgres(item) and not item.get_closest_marker("postgres"):
            item.add_marker("postgres")
        slow = Path(item.path).relative_to(TESTS).parts[0] in SLOW_DIRECTORIES
        if (slow or item.nodeid.startswith(SLOW_TESTS)) and not item.get_closest_marker("slow"):
            item.add_marker("slow")


# Which processes the running test started (its fixtures' setup included): an audit hook sees
# every start, whoever makes it (subprocess, asyncio, os.posix_spawn, os.fork).
SPAWNS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.system"})
# Probes libraries run on their own (`platform.processor()` runs `uname -p`): not processes
# of the test's.
PROBES = frozenset({"uname", "ldconfig", "lscpu", "nvidia-smi", "gcc", "cc", "ld", "objdump"})
_started: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in SPAWNS:
        return
    command = args[1] if event in ("subprocess.Popen", "os.posix_spawn") else args[:1]
    if len(command) == 1 and isinstance(command[0], str | bytes):  # a shell line
        command = command[0]
    if isinstance(command, bytes):
        command = command.decode(errors="replace")
    argv = command.split() if isinstance(command, str) else [str(arg) for arg in command]
    argv = argv or [event]
    if Path(argv[0]).name not in PROBES:
        _started.append(" ".join(argv)[:200])


sys.addaudithook(_audit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _started.clear()
    yield


@pytest.fixture(autouse=True)
def no_process_outside_system(request: pytest.FixtureRequest) -> Iterator[None]:
    """A unit or api test that starts a process fails: it is a system test."""
    yield
    tier = tier_of(request.node)
    if tier != "system" and _started:
        started = list(_started)
        _started.clear()
        pytest.fail(
            f"this {tier} test started {len(started)} process(es), first `{started[0]}`: "
            "a test that starts processes is `system` (list the fixture that starts it in "
            "SYSTEM_FIXTURES in tests/conftest.py, or mark the test)",
            pytrace=False,
        )
