"""Hugging Face directories through the SDK: `push_pretrained` saves a live model and its
tokenizer as safetensors and pushes them; a directory with config.json and safetensors is
guessed as `hf_causal_lm`; a sharded model's shards go up in parallel (every file's parts in
one bounded pool), and what the registry refuses at finalize reaches the caller by name."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from client import Client
from client.errors import ApiError, ModelplaneError
from client.transfer import TransferEvent
from tests.client.conftest import S3Plane, unique
from tests.support.tiny_llm import save_tiny_llama, tiny_llama, tiny_tokenizer

MiB = 2**20


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "m", shard_size="100KB")


def test_push_pretrained_saves_safetensors_and_records_the_source(s3_plane: S3Plane) -> None:
    pytest.importorskip("transformers")
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    model.config._name_or_path = "acme/tiny-llama"  # as from_pretrained leaves them
    model.config._commit_hash = "0123abcd"
    name = unique("pretrained")
    with s3_plane.client() as sdk:
        version = sdk.push_pretrained(name, model, tokenizer, max_shard_size="100KB")
    paths = {f.path for f in version.files}
    assert version.status.value == "ready" and version.format == "hf_causal_lm"
    assert {"config.json", "tokenizer.json", "model.safetensors.index.json"} <= paths
    assert len([p for p in paths if p.endswith(".safetensors")]) >= 3
    assert not [p for p in paths if p.endswith(".bin")]
    assert version.source == "huggingface:acme/tiny-llama@0123abcd"
    hf = version.metadata["huggingface"]
    assert hf["model_type"] == "llama" and hf["architectures"] == ["LlamaForCausalLM"]
    assert hf["revision"] == "0123abcd" and hf["parameters"] > 0


def test_a_directory_with_config_and_safetensors_is_guessed_as_hf_causal_lm(
    s3_plane: S3Plane, llama_dir: Path
) -> None:
    with s3_plane.client() as sdk:
        version = sdk.push(unique("guessed"), llama_dir)
    assert version.format == "hf_causal_lm" and version.status.value == "ready"


def test_a_directory_missing_a_shard_is_refused_by_the_shards_name(
    s3_plane: S3Plane, llama_dir: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(llama_dir, tmp_path / "copy"))
    gone = sorted(copy.glob("model-*.safetensors"))[1]
    gone.unlink()
    with s3_plane.client() as sdk, pytest.raises(ApiError) as refused:
        sdk.push(unique("missing"), copy, format="hf_causal_lm")
    assert refused.value.status == 422
    assert f"{gone.name} is named by model.safetensors.index.json" in str(refused.value)


def test_pickled_weights_are_refused(s3_plane: S3Plane, llama_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bin"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama_dir / name, copy / name)
    (copy / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickles")
    with s3_plane.client() as sdk, pytest.raises(ModelplaneError, match="pytorch_model.bin"):
        sdk.push(unique("pickled"), copy, format="hf_causal_lm")


def test_big_shards_go_up_in_parallel_parts_across_files(s3_plane: S3Plane, tmp_path: Path) -> None:
    """Three 9 MiB shards (two multipart parts each): every file's parts are sent before
    any file completes, i.e. the files are not uploaded one after another."""
    directory = synthetic_llama(tmp_path / "big", shards=3, shard_bytes=9 * MiB)
    events: list[TransferEvent] = []
    with Client(s3_plane.cp.url, None, concurrency=4) as sdk:
        version = sdk.push(unique("big"), directory, progress=events.append)
    assert version.status.value == "ready" and version.format == "hf_causal_lm"
    first_done = next(
        i for i, e in enumerate(events) if e.kind == "done" and e.path.endswith(".safetensors")
    )
    parted = {e.path for e in events[:first_done] if e.kind == "part"}
    assert len(parted) == 3, [(e.kind, e.path) for e in events]


def synthetic_llama(directory: Path, *, shards: int, shard_bytes: int) -> Path:
    """A Hugging Face directory whose shards each hold one zero FP32 tensor of about
    `shard_bytes` (valid headers and index; too big for a real tiny model)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    (directory / "tokenizer.json").write_text("{}")
    weight_map = {}
    for k in range(1, shards + 1):
        shard = f"model-{k:05d}-of-{shards:05d}.safetensors"
        rows = shard_bytes // (4 * 1024)
        tensor = f"layers.{k}.weight"
        header = json.dumps(
            {tensor: {"dtype": "F32", "shape": [rows, 1024], "data_offsets": [0, rows * 4096]}}
        ).encode()
        with (directory / shard).open("wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + rows * 4096)
        weight_map[tensor] = shard
    index = {"metadata": {"total_size": shards * shard_bytes}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory
