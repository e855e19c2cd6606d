"""The `modelplane` command line against `modelplane up`: `--output json` for every read,
one clear line and a non-zero exit for every error."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

from bench.harness import REPO, base_env, free_port
from cli.app import app
from client import Client, Unauthorized
from tests.client.conftest import Up, unique
from tests.client.test_sdk import Mlp, delete_and_wait

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")

SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}],
}


def run(up: Up, *args: str, code: int = 0, **env: str | None) -> Result:
    variables = {"MODELPLANE_URL": up.url, "MODELPLANE_TOKEN": up.token, **env}
    result = CliRunner().invoke(app, list(args), env=variables)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def run_json(up: Up, *args: str) -> Any:
    return json.loads(run(up, *args, "--output", "json").stdout)


def scripted(seed: int, path: Path) -> Path:
    torch.jit.save(torch.jit.script(Mlp(seed)), str(path))
    return path


def test_push_versions_alias_pull_and_events_with_json_output(up: Up, tmp_path: Path) -> None:
    name = unique("cli")
    (tmp_path / "v1").mkdir()
    first = scripted(1, tmp_path / "v1" / "model.pt")
    pushed = run_json(
        up, "push", name, str(first), "--alias", "production", "--signature", json.dumps(SIGNATURE),
        "--tag", "team=ml", "--metadata", '{"acc": 0.91}',
    )  # fmt: skip
    assert pushed["version"] == 1 and pushed["status"] == "ready"
    assert pushed["format"] == "torchscript" and pushed["signature"] == SIGNATURE
    assert pushed["tags"] == {"team": "ml"} and pushed["metadata"] == {"acc": 0.91}

    (tmp_path / "v2").mkdir()
    second = scripted(2, tmp_path / "v2" / "model.pt")
    text = run(up, "push", name, str(second), "--alias", "production").stdout
    assert f"pushed {name} version 2 @production (ready): 1 uploaded" in text

    assert [m["name"] for m in run_json(up, "models", "ls", "-q", name)] == [name]
    assert run_json(up, "models", "show", name)["name"] == name
    assert [v["version"] for v in run_json(up, "versions", "ls", name)] == [2, 1]
    shown = run_json(up, "versions", "show", name, "production")
    assert shown["version"] == 2 and shown["files"][0]["path"] == "model.pt"
    [production] = run_json(up, "alias", "ls", name)
    assert (production["alias"], production["version"]) == ("production", 2)
    history = run_json(up, "alias", "history", name, "production")
    assert [(h["from_version"], h["to_version"]) for h in history] == [(1, 2), (None, 1)]
    assert run_json(up, "alias", "rollback", name, "production")["version"] == 1
    assert run_json(up, "alias", "set", name, "production", "2")["version"] == 2

    pulled = run_json(up, "pull", name, "1", "--dest", str(tmp_path / "back"))
    assert pulled["version"] == 1
    assert (tmp_path / "back" / "model.pt").read_bytes() == first.read_bytes()

    actions = [e["action"] for e in run_json(up, "events", "--model", name, "--limit", "100")]
    assert actions.count("alias.moved") >= 3 and "version.ready" in actions
    [last] = run_json(up, "events", "--model", name, "--limit", "1", "--newest-first")
    assert last["action"] == "alias.moved" and last["after"] is not None


def test_deploy_endpoints_infer_and_rollback(up: Up, tmp_path: Path) -> None:
    name = unique("serve")
    first, second = Mlp(4), Mlp(5)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with up.client() as sdk:
        sdk.push_module(name, first, torch.zeros(2, 4))
        sdk.push_module(name, second, torch.zeros(2, 4))
        try:
            d = run_json(up, "deploy", name, "--model", name, "--version", "1")
            assert (d["revision"], d["version"], d["status"]) == (1, 1, "available")
            [endpoint] = run_json(up, "endpoints", name)
            assert endpoint["status"] == "ready" and endpoint["version"] == 1

            answer = run_json(up, "infer", name, "--input", str(tmp_path / "x.npy"))
            expected = first(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(answer["output0"]["data"], expected, rtol=1e-5)
            assert answer["output0"]["shape"] == [3, 3]
            out = tmp_path / "y.npy"
            named = f"features={tmp_path / 'x.npy'}"
            run(up, "infer", name, "-i", named, "--output-file", str(out))
            np.testing.assert_allclose(np.load(out), expected, rtol=1e-5)

            d = run_json(up, "deploy", name, "--version", "2")
            assert (d["revision"], d["version"], d["status"]) == (2, 2, "available")
            d = run_json(up, "rollback", name)
            assert (d["revision"], d["version"], d["status"]) == (3, 1, "available")
            answer = run_json(up, "infer", name, "--input", str(tmp_path / "x.npy"))
            np.testing.assert_allclose(answer["output0"]["data"], expected, rtol=1e-5)

            d = run_json(up, "rollback", name, "--to-revision", "2", "--no-wait")
            assert (d["revision"], d["version"]) == (4, 2)
            assert name in [d["name"] for d in run_json(up, "deployments", "ls")]
            assert run_json(up, "deployments", "show", name)["revision"] == 4
            revisions = run_json(up, "deployments", "revisions", name)
            assert [r["reason"] for r in revisions] == ["rollback", "rollback", "update", "create"]
            table = run(up, "deployments", "show", name).stdout
            assert f"{name} revision 4" in table and "REVISION" in table
        finally:
            delete_and_wait(sdk, name, up)


def test_an_error_is_one_line_on_stderr_and_a_non_zero_exit(up: Up) -> None:
    env = {**base_env(), "MODELPLANE_URL": up.url, "MODELPLANE_TOKEN": up.token or ""}
    command = [sys.executable, "-m", "cli", "models", "show", "no-such-model"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: 404 Not Found: model 'no-such-model' does not exist"
    ]

    nobody = f"http://127.0.0.1:{free_port()}"
    result = run(up, "--url", nobody, "deployments", "ls", code=1)
    assert result.stderr.startswith(f"error: cannot reach {nobody}") and "Traceback" not in (
        result.stderr + result.stdout
    )
    assert len(result.stderr.strip().splitlines()) == 1
    result = run(up, "infer", "nope", "--input", "/nonexistent.npy", code=1)
    assert result.stderr.startswith("error: --input /nonexistent.npy: not a readable .npy file")
    result = run(up, "deploy", "x", "--version", "1", "--alias", "p", code=1)
    assert result.stderr.strip() == "error: give a version or an alias, not both"


def test_login_saves_the_url_and_token_for_later_commands(up: Up, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": None, "MODELPLANE_URL": None}
    env["MODELPLANE_HOME"] = str(tmp_path / "no-home")
    result = CliRunner().invoke(app, ["login", up.url, "--token", up.token or ""], env=env)
    assert result.exit_code == 0, result.stderr
    saved = tmp_path / ".config" / "modelplane" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["url"] == up.url
    # No --url and no MODELPLANE_URL: the saved login is where commands go.
    listed = CliRunner().invoke(app, ["models", "ls", "-o", "json"], env=env)
    assert listed.exit_code == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)


@pytest.mark.parametrize("command", [["models", "ls"], ["deployments", "ls"], ["events"]])
def test_read_commands_print_tables_by_default(up: Up, command: list[str]) -> None:
    assert run(up, *command).stdout.split()[0] in ("NAME", "TIME")
    assert isinstance(run_json(up, *command), list)


def test_platform_commands_are_still_there() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    for command in ("up", "server", "worker", "migrate", "login", "push", "deploy", "infer"):
        assert f" {command} " in result.stdout
    worker = CliRunner().invoke(app, ["worker", "--help"])
    assert worker.exit_code == 0 and "--control-plane" in worker.stdout


def test_without_a_token_a_secured_platform_refuses_in_one_line(up: Up, tmp_path: Path) -> None:
    assert up.token is not None  # `up` runs with authentication and saved its admin key
    nowhere = {"MODELPLANE_TOKEN": None, "MODELPLANE_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = run(up, "models", "ls", code=1, **nowhere)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 401 Unauthorized") and "modelplane login" in line
    with pytest.raises(Unauthorized):
        Client(up.url, "mp_not-a-key").list_models()


def test_keys_and_other_commands_find_up_s_saved_admin_key(up: Up) -> None:
    """No URL or token given: both come from $MODELPLANE_HOME/credentials.json."""
    env = {"MODELPLANE_URL": None, "MODELPLANE_TOKEN": None, "MODELPLANE_HOME": str(up.home)}
    listed = run(up, "keys", "list", **env)
    assert "admin" in listed.stdout
    assert isinstance(run(up, "models", "ls", "-o", "json", **env).stdout, str)


def test_deploy_optimize_from_the_command_line(up: Up, tmp_path: Path) -> None:
    name = unique("quant")
    mlp = Mlp(6)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with up.client() as sdk:
        sdk.push_module(name, mlp, torch.from_numpy(x))
        try:
            refused = run(up, "deploy", name, "--version", "1", "--optimize", "fp16", code=1)
            assert "fp16 needs a CUDA device" in refused.stderr
            alone = run(up, "deploy", name, "--version", "1", "--max-abs-error", "0.1", code=1)
            assert "--max-abs-error goes with --optimize" in alone.stderr
            assert name not in [d.name for d in sdk.list_deployments()]

            args = ["--optimize", "int8_dynamic", "--max-abs-error", "0.5"]
            d = run_json(up, "deploy", name, "--version", "1", *args)
            assert d["status"] == "available"
            [revision] = run_json(up, "deployments", "revisions", name)
            report = revision["optimization"]
            assert report["requested"] == report["applied"] == "int8_dynamic"
            assert report["passed"] and report["max_abs_error"] <= 0.5
            answer = run_json(up, "infer", name, "--input", str(tmp_path / "x.npy"))
            expected = mlp(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(answer["output0"]["data"], expected, atol=0.5)
        finally:
            delete_and_wait(sdk, name, up)
