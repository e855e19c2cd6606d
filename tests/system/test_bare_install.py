"""`pip install modelplane` without extras: the SDK and the command line, in a fresh venv.

The package is built from a copy of this checkout (its packages, pyproject.toml, README.md)
and installed with pip as a user would; nothing of the dev venv leaks in (no PYTHONPATH, the
working directory is elsewhere). Then: no server, torch or database package is installed,
every module of contract/, client/ and cli/ imports, `modelplane --help` works, the commands
that run a server say in one line which extra to install, and the SDK and the CLI talk to a
live control plane (`python -m cli up` from the dev venv) without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.harness import REPO, Process, base_env, free_port, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

# Import names the bare install must not have: the server side, the runtimes, their drivers.
SERVER_SIDE = (
    "torch",
    "safetensors",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "aiosqlite",
    "boto3",
    "aiohttp",
    "orjson",
    "prometheus_client",
    "pydantic_settings",
)
# The commands that run or act on a server on this machine.
SERVER_COMMANDS = (
    ["up"],
    ["server"],
    ["migrate"],
    ["worker"],
    ["stack"],
    ["keys", "create", "--name", "first", "--scopes", "admin", "--offline"],
)
PIP_TIMEOUT_S = 600


@dataclass
class Venv:
    root: Path
    cwd: Path  # outside the checkout, so `python -c` cannot import the repository's code

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def modelplane(self) -> str:
        return str(self.root / "bin" / "modelplane")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
        env.pop("PYTHONPATH", None)
        env["HOME"] = str(self.cwd)  # no saved credentials of the machine's user
        return env

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )

    def python_json(self, code: str, *args: str) -> object:
        """What ``code`` prints last, as JSON."""
        done = self.run(self.python, "-c", code, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])


def source_copy(dest: Path) -> Path:
    """What an sdist of this checkout holds: pyproject.toml, README.md and the packages
    pyproject names (so the build neither writes into the checkout nor sees its .venv)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in sorted({pattern.rstrip("*").split(".")[0] for pattern in include}):
        shutil.copytree(REPO / package, dest / package, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with `pip install <checkout>`: no extras."""
    tmp = tmp_path_factory.mktemp("bare-install")
    venv = Venv(tmp / "venv", tmp / "work")
    venv.cwd.mkdir()
    made = venv.run(sys.executable, "-m", "venv", str(venv.root))
    assert made.returncode == 0, made.stderr
    source = source_copy(tmp / "src")
    pip = [venv.python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    done = venv.run(*pip, str(source), timeout=PIP_TIMEOUT_S)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return venv


def test_the_bare_install_has_no_server_torch_or_database_package(bare: Venv) -> None:
    found = bare.python_json(
        "import importlib.util, json; "
        f"print(json.dumps([n for n in {list(SERVER_SIDE)!r} "
        "if importlib.util.find_spec(n) is not None]))"
    )
    assert found == []


# Imports every module of the bare install's packages; the server-side names come as argv.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
failed = {}
for package in ("contract", "client", "cli"):
    root = importlib.import_module(package)
    assert "site-packages" in root.__file__, root.__file__  # the installed copy, not the repo
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = repr(exc)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"failed": failed, "heavy": heavy}))
"""


def test_every_sdk_cli_and_contract_module_imports_without_the_server(bare: Venv) -> None:
    result = bare.python_json(IMPORT_ALL, *SERVER_SIDE)
    assert result == {"failed": {}, "heavy": []}


def test_modelplane_help_lists_the_commands(bare: Venv) -> None:
    done = bare.run(bare.modelplane, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("up", "push", "pull", "deploy", "keys", "login"):
        assert f" {command} " in done.stdout, done.stdout


@pytest.mark.parametrize("argv", SERVER_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_a_server_command_says_which_extra_to_install(bare: Venv, argv: list[str]) -> None:
    done = bare.run(bare.modelplane, *argv)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'modelplane[server]'" in lines[0], lines[0]


@dataclass
class Live:
    url: str
    token: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`python -m cli up` from the dev venv (no deployer worker: only the API is called)."""
    home = tmp_path_factory.mktemp("bare-live")
    port = free_port()
    env = {**base_env(), "MODELPLANE_HOME": str(home)}
    args = ["-m", "cli", "up", "--home", str(home), "--port", str(port), "--no-worker"]
    process = Process(args, home / "up.log", env)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.process.poll() is None, process.log()
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200

        wait_for("modelplane up", ready, 90, process.log)
        token = json.loads((home / "credentials.json").read_text())["token"]
        yield Live(url, token)
    finally:
        process.stop(30)


def test_the_sdk_pushes_lists_and_pulls_against_a_live_server(
    bare: Venv, live: Live, tmp_path: Path
) -> None:
    data = os.urandom(256 * 1024 + 3)
    (tmp_path / "model.pt").write_bytes(data)
    code = f"""
import json, sys
from client import Client
with Client({live.url!r}, {live.token!r}) as sdk:
    pushed = sdk.push("bare-sdk", {str(tmp_path / "model.pt")!r}, alias="production")
    names = [m.name for m in sdk.list_models(q="bare-sdk")]
    pulled = sdk.pull("bare-sdk", "@production", {str(tmp_path / "pulled")!r})
print(json.dumps({{"version": pushed.version, "status": pushed.status,
    "sha256": pushed.files[0].sha256, "names": names, "pulled": pulled.version,
    "torch": "torch" in sys.modules}}))
"""
    result = bare.python_json(code)
    assert result == {
        "version": 1,
        "status": "ready",
        "sha256": hashlib.sha256(data).hexdigest(),
        "names": ["bare-sdk"],
        "pulled": 1,
        "torch": False,
    }
    assert (tmp_path / "pulled" / "model.pt").read_bytes() == data


def test_the_cli_creates_and_lists_models_on_a_live_server(bare: Venv, live: Live) -> None:
    argv = [bare.modelplane, "--url", live.url, "--token", live.token]
    created = bare.run(*argv, "models", "create", "bare-cli")
    assert created.returncode == 0, created.stderr
    listed = bare.run(*argv, "models", "ls", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert "bare-cli" in [model["name"] for model in json.loads(listed.stdout)]


def test_the_dev_extras_resolve_to_the_cpu_torch_only(bare: Venv, tmp_path: Path) -> None:
    # `torch==2.13.0` exactly: the machines' CPU wheel (2.13.0+cpu) satisfies it; anything
    # looser lets pip choose a CUDA build and its gigabytes of nvidia-* packages.
    report = tmp_path / "report.json"
    pip = [bare.python, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    pip += ["--dry-run", "--ignore-installed", "--report", str(report)]
    done = bare.run(*pip, f"{source_copy(tmp_path / 'src')}[dev]", timeout=PIP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert chosen["torch"] == "2.13.0+cpu"
    cuda = sorted(name for name in chosen if name.startswith(("nvidia-", "triton", "cuda")))
    assert cuda in ([], ["tritonclient"]), cuda  # tritonclient: the test tool, not CUDA
