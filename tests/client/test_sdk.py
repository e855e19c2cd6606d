"""The SDK against `modelplane up` (control plane + its deployer worker, real processes)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bench.harness import wait_for
from client import Client, Conflict, DigestMismatch, NotFound, TransferEvent, ValidationError
from client.errors import ModelplaneError
from contract.schemas import DeploymentStatus, VersionStatus
from tests.client.conftest import Up, unique


class Mlp(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def uploaded_files(sdk: Client, model: str) -> int:
    """Files the server stored bytes for, from its audit log."""
    return len(sdk.events(model=model, action="file.uploaded", limit=None))


def test_push_then_pull_round_trip_and_a_second_push_uploads_nothing(
    up: Up, tmp_path: Path
) -> None:
    model = unique("roundtrip")
    src = tmp_path / "src"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.pt").write_bytes(os.urandom(3 * 2**20 + 7))
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    first: list[TransferEvent] = []
    with up.client() as sdk:
        v1 = sdk.push(
            model, src, alias="staging", tags={"team": "ml"}, metadata={"acc": 0.9},
            progress=first.append,
        )  # fmt: skip
        assert v1.status == VersionStatus.ready and v1.format == "torchscript"
        assert sorted(f.path for f in v1.files) == ["model.pt", "tokenizer/vocab.txt"]
        assert v1.metadata == {"acc": 0.9} and v1.tags == {"team": "ml"}
        assert sdk.get_alias(model, "staging").version == v1.version
        assert {e.path for e in first if e.kind == "done"} == {"model.pt", "tokenizer/vocab.txt"}
        assert uploaded_files(sdk, model) == 2

        second: list[TransferEvent] = []
        v2 = sdk.push(model, src, progress=second.append)
        assert v2.version == v1.version + 1 and v2.status == VersionStatus.ready
        assert [e.kind for e in second if not e.kind.startswith("hash")] == ["skip", "skip"]
        assert sum(e.nbytes for e in second if e.kind == "hashing") == v1.files[0].size + 6
        assert uploaded_files(sdk, model) == 2  # the server stored no new bytes

        pulled = sdk.pull(model, "staging", tmp_path / "dest")
        assert pulled.version == v1.version
    for path in ("model.pt", "tokenizer/vocab.txt"):
        assert (tmp_path / "dest" / path).read_bytes() == (src / path).read_bytes()


def test_pull_resumes_a_partial_file_and_starts_over_from_a_stale_one(
    up: Up, tmp_path: Path
) -> None:
    model = unique("resume")
    data = os.urandom(2 * 2**20 + 3)
    (tmp_path / "model.pt").write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with up.client() as sdk:
        sdk.push(model, tmp_path / "model.pt")
        (dest / "model.pt.part").write_bytes(data[: 2**20])
        events: list[TransferEvent] = []
        sdk.pull(model, 1, dest, progress=events.append)
        [start] = [e for e in events if e.kind == "start"]
        assert start.nbytes == 2**20  # continued with a Range request
        assert sum(e.nbytes for e in events if e.kind == "advance") == len(data) - 2**20
        assert (dest / "model.pt").read_bytes() == data
        assert not (dest / "model.pt.part").exists()

        (dest / "model.pt").unlink()
        (dest / "model.pt.part").write_bytes(b"x" * 2**20)  # a prefix that is not the file's
        events.clear()
        sdk.pull(model, 1, dest, progress=events.append)
        assert [e.nbytes for e in events if e.kind == "start"] == [2**20, 0]
    assert (dest / "model.pt").read_bytes() == data


def test_pull_refuses_bytes_that_do_not_match_the_manifest(up: Up, tmp_path: Path) -> None:
    model = unique("corrupt")
    data = os.urandom(300_000)
    (tmp_path / "model.pt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with up.client() as sdk:
        sdk.push(model, tmp_path / "model.pt")
        blob = up.home / "artifacts" / "blobs" / "sha256" / digest
        blob.write_bytes(b"y" * len(data))  # the store's copy rots
        with pytest.raises(DigestMismatch, match=digest):
            sdk.pull(model, 1, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_problems_become_typed_exceptions(up: Up) -> None:
    with up.client() as sdk:
        with pytest.raises(NotFound) as missing:
            sdk.get_model("no-such-model")
        assert missing.value.type == "/problems/model-not-found"
        assert "no-such-model" in str(missing.value)
        name = unique("dup")
        sdk.create_model(name)
        with pytest.raises(Conflict):
            sdk.create_model(name)
        with pytest.raises(ValidationError) as invalid:
            sdk.create_model("Not A Slug")
        assert invalid.value.errors and "name" in str(invalid.value)
        with pytest.raises(ModelplaneError, match="no such file"):
            sdk.push(name, "/nonexistent/model.pt")


def test_push_module_deploy_infer_update_and_rollback(up: Up) -> None:
    """A live module to a deployment and back: the answers are the modules' own outputs,
    through the stable URL, before and after an update and a rollback."""
    name = unique("mlp")
    first, second = Mlp(1), Mlp(2)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with up.client() as sdk:
        v1 = sdk.push_module(name, first, torch.zeros(2, 4), alias="production")
        assert v1.signature == {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}],
        }
        v2 = sdk.push_module(name, second, torch.zeros(1, 4), format="torch_export")
        assert v2.format == "torch_export" and v2.signature == v1.signature
        try:
            sdk.deploy(name, version=v1.version)
            sdk.wait_ready(name, timeout=120)
            expected = first(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(sdk.infer(name, x)["output0"], expected, rtol=1e-5)
            assert [e.version for e in sdk.endpoints(name) if e.status == "ready"] == [1]

            updated = sdk.deploy(name, version=v2.version)
            assert updated.revision == 2
            sdk.wait_ready(name, timeout=120)
            got = sdk.infer(name, {"features": x})["output0"]
            np.testing.assert_allclose(got, second(torch.from_numpy(x)).detach().numpy(), rtol=1e-5)

            back = sdk.rollback(name)
            assert back.revision == 3 and back.version == v1.version
            ready = sdk.wait_ready(name, timeout=120)
            assert ready.status == DeploymentStatus.available and ready.version == v1.version
            np.testing.assert_allclose(sdk.infer(name, [x])["output0"], expected, rtol=1e-5)
            assert [r.reason for r in sdk.revisions(name)] == ["rollback", "update", "create"]
        finally:
            delete_and_wait(sdk, name, up)


def delete_and_wait(sdk: Client, name: str, up: Up) -> None:
    """Deployments hold CPU slots of the one worker: free them for the next test."""
    if sdk.delete_deployment(name) is None:
        return

    def gone() -> bool:
        try:
            sdk.get_deployment(name)
        except NotFound:
            return True
        return False

    wait_for(f"deployment {name} to go", gone, 60, up.logs)


def test_wait_ready_names_why_a_deployment_does_not_come_up(up: Up) -> None:
    name = unique("huge")
    with up.client() as sdk:
        v = sdk.push_module(name, Mlp(3), torch.zeros(2, 4))
        sdk.deploy(name, version=v.version, replicas=1, gpus=8)
        try:
            started = time.monotonic()
            with pytest.raises(ModelplaneError, match="GPU"):
                sdk.wait_ready(name, timeout=3, interval=0.2)
            assert time.monotonic() - started < 60
        finally:
            delete_and_wait(sdk, name, up)
