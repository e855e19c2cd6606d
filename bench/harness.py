"""Real Modelplane processes for benchmarks and end-to-end tests: control plane, deployer
workers, models. (tests/ imports bench/, never the reverse.)

Every process is started on loopback with its output in a log file, and stopped by PID
(SIGTERM, then SIGKILL after a bound). Waits are bounded and fail with the logs attached.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float, logs: Callable[[], str]
) -> T:
    """Polls `check` until it returns something truthy; fails naming `what` with the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if result := check():
                return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs()}")


class Process:
    """One child process, its output in `log_path`, stopped by PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self, tail: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.log_path.name} ---\n{text[-tail:]}"

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(5)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def auth(token: str | None) -> dict[str, str]:
    """The headers that carry an API key (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def mint(database_url: str, name: str, scopes: list[str]) -> str:
    """A key straight in the (migrated) database, as `modelplane keys create --offline`."""
    import asyncio

    from contract.schemas import KeyCreate
    from registry.services.keys import mint_key

    body = KeyCreate.model_validate({"name": name, "scopes": scopes})
    return asyncio.run(mint_key(database_url, body, by="tests")).token


class ControlPlane(Process):
    """`python -m cli server --migrate` with the given MODELPLANE_* settings (auth on:
    ``mint_keys`` after ``wait_ready`` gives it an admin and a worker key)."""

    token: str | None = None  # admin
    worker_token: str | None = None

    def __init__(self, log_dir: Path, settings: dict[str, str]) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v1"
        env = {**base_env(), "MODELPLANE_HOST": "127.0.0.1", "MODELPLANE_PORT": str(self.port)}
        env.update(settings)
        super().__init__(["-m", "cli", "server", "--migrate"], log_dir / "cp.log", env)

    def wait_ready(self, timeout: float = 60.0) -> ControlPlane:
        def ready() -> bool:
            assert self.process.poll() is None, self.log()
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

        wait_for("the control plane", ready, timeout, self.log)
        return self

    def mint_keys(self) -> ControlPlane:
        url = self.settings["MODELPLANE_DATABASE_URL"]
        self.token = mint(url, "e2e admin", ["admin"])
        self.worker_token = mint(url, "e2e worker", ["worker"])
        return self


class Worker(Process):
    """`python -m deployer` against a control plane, with its own cache."""

    def __init__(
        self, log_dir: Path, control_plane: str, name: str, token: str | None, **flags: str
    ) -> None:
        self.name = name
        self.cache_dir = log_dir / f"cache-{name}"
        args = ["-m", "deployer", "--control-plane", control_plane, "--name", name]
        args += ["--cache-dir", str(self.cache_dir)]
        for flag, value in flags.items():
            args += ["--" + flag.replace("_", "-"), value]
        env = {**base_env(), **({"MODELPLANE_WORKER_TOKEN": token} if token else {})}
        super().__init__(args, log_dir / f"worker-{name}.log", env)


class AddConst(nn.Module):
    """y = x + c: the answer tells which version served a call."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c


SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


def torchscript_bytes(c: float, path: Path, tag: str = "") -> bytes:
    """`tag` (an extra file in the archive) makes the bytes, hence the digest, unique."""
    torch.jit.save(torch.jit.script(AddConst(c)), path, _extra_files={"tag": tag or path.name})
    return path.read_bytes()


def torch_export_bytes(c: float, path: Path, tag: str = "") -> bytes:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        AddConst(c), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, path, extra_files={"tag": tag or path.name})
    return path.read_bytes()


def push_version(
    url: str, model: str, files: dict[str, bytes], fmt: str, token: str | None, **extra: Any
) -> dict[str, Any]:
    """Create the model if needed, create a version from its manifest, PUT the bytes the
    registry lacks, finalize: the ready version."""
    api = "/api/v1"
    with httpx.Client(base_url=url, timeout=30, headers=auth(token)) as http:
        created = http.post(f"{api}/models", json={"name": model})
        assert created.status_code in (201, 409), created.text
        manifest = [
            {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for p, d in files.items()
        ]
        answer = http.post(
            f"{api}/models/{model}/versions", json={"files": manifest, "format": fmt, **extra}
        )
        assert answer.status_code == 201, answer.text
        version: dict[str, Any] = answer.json()
        for f in version["files"]:
            if not f["present"]:
                put = http.put(f["upload"]["url"], content=files[f["path"]])
                assert put.status_code == 200, put.text
        done = http.post(f"{api}/models/{model}/versions/{version['version']}/finalize")
        assert done.status_code == 200 and done.json()["status"] == "ready", done.text
        ready: dict[str, Any] = done.json()
        return ready
