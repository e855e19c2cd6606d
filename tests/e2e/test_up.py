"""`modelplane up` as a newcomer runs it: one process, embedded defaults, curl against it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def token(home: Path) -> str:
    """The admin key `up` saved on its first start."""
    saved: dict[str, str] = json.loads((home / "credentials.json").read_text())
    return saved["token"]


def auth(home: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(home)}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    log = (home / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--home", str(home), "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (home / "up.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"modelplane up not ready in 60 s:\n{(home / 'up.log').read_text()}")
        yield url, home
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_up_prints_where_the_docs_are(platform: tuple[str, Path]) -> None:
    url, home = platform
    printed = (home / "up.log").read_text()
    assert f"{url}/docs" in printed and f"{url}/redoc" in printed
    assert httpx.get(f"{url}/docs").status_code == 200
    assert httpx.get(f"{url}/redoc").status_code == 200
    assert (home / "registry.db").exists()


def test_up_saves_an_admin_key_once_owner_only(platform: tuple[str, Path]) -> None:
    url, home = platform
    path = home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["url"] == url and saved["token"].startswith("mp_")
    assert saved["token"] in (home / "up.log").read_text()  # printed on the first start
    assert httpx.get(f"{url}/api/v1/models").status_code == 401
    keys = httpx.get(f"{url}/api/v1/keys", headers=auth(home))
    assert keys.status_code == 200, keys.text
    by_name = {k["name"]: k for k in keys.json()["items"]}
    assert by_name["admin"]["scopes"] == ["admin"]
    assert by_name["embedded worker"]["scopes"] == ["worker"]
    assert stat.S_IMODE((home / "worker-credentials.json").stat().st_mode) == 0o600


def test_up_one_shot_curl_upload_downloads_identical_bytes(
    platform: tuple[str, Path], tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url, home = platform
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(3 * 2**20 + 17))

    def run(*args: str) -> str:
        return subprocess.run(
            [curl, "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {token(home)}", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    run(
        "-X",
        "POST",
        f"{url}/api/v1/models",
        "-H",
        "content-type: application/json",
        "-d",
        '{"name":"iris"}',
    )
    run(
        "-F",
        f"file=@{model}",
        "-F",
        "format=torchscript",
        "-F",
        "alias=production",
        f"{url}/api/v1/models/iris/versions:upload",
    )
    version = httpx.get(f"{url}/api/v1/models/iris/versions/@production", headers=auth(home)).json()
    assert version["version"] == 1 and version["status"] == "ready"
    back = tmp_path / "back.pt"
    run("-o", str(back), f"{url}/api/v1/models/iris/versions/1/files/model.pt")
    assert back.read_bytes() == model.read_bytes()
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert version["files"] == [
        {
            "path": "model.pt",
            "size": model.stat().st_size,
            "sha256": digest,
            "present": True,
            "upload": None,
        }
    ]
    assert (home / "artifacts").is_dir()


def test_up_runs_a_worker_that_serves_a_deployment(
    platform: tuple[str, Path], tmp_path: Path
) -> None:
    """The embedded platform (SQLite, folder artifacts) deploys with its own worker."""
    from bench.harness import SIGNATURE, push_version, torchscript_bytes, wait_for

    url, home = platform
    data = torchscript_bytes(1.0, tmp_path / "plus1.pt")
    headers = auth(home)
    push_version(url, "plus1", {"model.pt": data}, "torchscript", token(home), signature=SIGNATURE)
    body = {"name": "plus1", "model": "plus1", "version": 1}
    assert httpx.post(f"{url}/api/v1/deployments", json=body, headers=headers).status_code == 201
    call = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}

    def answered() -> list[float] | None:
        answer = httpx.post(
            f"{url}/serve/plus1/v2/models/plus1/infer", json=call, timeout=5, headers=headers
        )
        return answer.json()["outputs"][0]["data"] if answer.status_code == 200 else None

    log = lambda: (home / "up.log").read_text()  # noqa: E731
    assert wait_for("plus1 through /serve", answered, 45, log) == [2, 3, 4, 5]
    assert (home / "cache" / "blobs" / "sha256").is_dir()
    assert httpx.delete(f"{url}/api/v1/deployments/plus1", headers=headers).status_code in (
        202,
        204,
    )


def test_keys_cli_over_the_api_with_the_saved_key(platform: tuple[str, Path]) -> None:
    """`modelplane keys create/list/revoke` find the server and key in credentials.json."""
    url, home = platform
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    env["MODELPLANE_HOME"] = str(home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", "keys", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    created = cli("create", "--name", "ci", "--scopes", "read", "--model-glob", "iris*")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/api/v1/models", headers=headers).status_code == 200
    listed = cli("list")
    key_id = next(line.split()[0] for line in listed.stdout.splitlines() if line.endswith(" ci"))
    assert "models=iris*" in listed.stdout
    assert cli("revoke", key_id).returncode == 0
    assert httpx.get(f"{url}/api/v1/models", headers=headers).status_code == 401
    assert cli("revoke", "f" * 32).returncode == 1  # 404, said on stderr
