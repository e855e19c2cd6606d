"""Hugging Face-format versions (`hf_causal_lm`, `hf_embedding`): a directory as
`save_pretrained` writes it. Names and sizes are checked at creation; at finalize the registry
reads what the files hold (config, the shard index, each safetensors header) and refuses, with
a 422 naming the file, a version a serving process could not load."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import httpx
import pytest

from tests.registry.helpers import API, assert_problem, create_version, manifest, ready_version
from tests.support.tiny_llm import save_tiny_llama

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def llama_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A tiny Llama saved in 3+ shards, as {path in the version: bytes}."""
    pytest.importorskip("transformers")
    directory = save_tiny_llama(tmp_path_factory.mktemp("llama") / "m", shard_size="100KB")
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def shards(files: dict[str, bytes]) -> list[str]:
    return sorted(p for p in files if p.endswith(".safetensors"))


async def finalize_problem(
    client: httpx.AsyncClient, model: str, files: dict[str, bytes], **extra: object
) -> dict[str, object]:
    """Create and upload `files`, then finalize: the 422 problem it answers."""
    version = await create_version(client, model, files, format="hf_causal_lm", **extra)
    for f in version["files"]:
        if not f["present"]:
            put = await client.put(f["upload"]["url"], content=files[f["path"]])
            assert put.status_code == 200, put.text
    done = await client.post(f"{API}/models/{model}/versions/{version['version']}/finalize")
    body = assert_problem(done, 422, "invalid-artifact-layout")
    again = await client.get(f"{API}/models/{model}/versions/{version['version']}")
    assert again.json()["status"] == "pending"
    return body


async def test_a_sharded_llama_directory_becomes_a_ready_version(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    assert len(shards(llama_files)) >= 3
    number = await ready_version(client, model, llama_files, format="hf_causal_lm")
    out = (await client.get(f"{API}/models/{model}/versions/{number}")).json()
    assert out["format"] == "hf_causal_lm" and out["status"] == "ready"
    assert {f["path"] for f in out["files"]} == set(llama_files)


async def test_a_shard_missing_from_the_directory_is_refused_at_finalize_by_name(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    gone = shards(llama_files)[1]
    files = {p: d for p, d in llama_files.items() if p != gone}
    detail = str((await finalize_problem(client, model, files))["detail"])
    assert f"{gone} is named by {INDEX} but not in the version" in detail


async def test_a_corrupted_safetensors_header_is_refused_naming_the_shard(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    bad = shards(llama_files)[0]
    data = llama_files[bad]
    (length,) = struct.unpack("<Q", data[:8])
    garbled = {**llama_files, bad: data[:8] + b"{not json" + data[17:]}
    detail = str((await finalize_problem(client, model, garbled))["detail"])
    assert bad in detail and "invalid safetensors header" in detail
    too_long = {**llama_files, bad: struct.pack("<Q", len(data)) + data[8:]}
    detail = str((await finalize_problem(client, model, too_long))["detail"])
    assert bad in detail and f"the file has {len(data)}" in detail
    truncated = {**llama_files, bad: data[: 8 + length + 16]}
    detail = str((await finalize_problem(client, model, truncated))["detail"])
    assert bad in detail and "outside its 16 bytes" in detail
    padded = {**llama_files, bad: data + b"\0" * 16}
    detail = str((await finalize_problem(client, model, padded))["detail"])
    assert bad in detail and "truncated or padded" in detail


async def test_tensors_that_do_not_match_the_index_are_refused(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    index = json.loads(llama_files[INDEX])
    first, second = shards(llama_files)[:2]
    moved = next(t for t, s in index["weight_map"].items() if s == first)
    index["weight_map"][moved] = second
    files = {**llama_files, INDEX: json.dumps(index).encode()}
    detail = str((await finalize_problem(client, model, files))["detail"])
    assert moved in detail and (first in detail or second in detail)


async def test_a_config_that_is_not_a_transformers_config_is_refused(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    broken = {**llama_files, "config.json": b"{'model_type': llama"}
    assert "config.json is not valid JSON" in str(
        (await finalize_problem(client, model, broken))["detail"]
    )
    bare = {**llama_files, "config.json": b'{"hidden_size": 64}'}
    assert "model_type nor architectures" in str(
        (await finalize_problem(client, model, bare))["detail"]
    )


async def test_pickled_weights_are_refused_unless_the_version_allows_pickle(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    files = {p: d for p, d in llama_files.items() if not p.startswith("model")}
    files["pytorch_model.bin"] = b"PK\x03\x04 a torch.save zip of pickles"
    response = await client.post(
        f"{API}/models/{model}/versions",
        json={"format": "hf_causal_lm", "files": manifest(files)},
    )
    detail = assert_problem(response, 422, "invalid-artifact-layout")["detail"]
    assert "pytorch_model.bin" in detail and "safe_serialization=True" in detail
    allowed = await create_version(
        client, model, files, format="hf_causal_lm", metadata={"allow_pickle": True}
    )
    assert allowed["status"] == "pending"


async def test_names_and_sizes_are_checked_at_creation(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    for drop, says in [
        ("config.json", "needs config.json"),
        ("tokenizer.json", "needs a tokenizer"),
        (INDEX, f"no {INDEX}"),
    ]:
        files = {p: d for p, d in llama_files.items() if p != drop}
        response = await client.post(
            f"{API}/models/{model}/versions",
            json={"format": "hf_causal_lm", "files": manifest(files)},
        )
        assert says in assert_problem(response, 422, "invalid-artifact-layout")["detail"]


async def test_the_one_shot_upload_reads_the_contents_too(
    client: httpx.AsyncClient, model: str, llama_files: dict[str, bytes]
) -> None:
    gone = shards(llama_files)[-1]
    parts = [("file", (p, d)) for p, d in llama_files.items() if p != gone]
    response = await client.post(
        f"{API}/models/{model}/versions:upload", files=parts, data={"format": "hf_causal_lm"}
    )
    assert gone in assert_problem(response, 422, "invalid-artifact-layout")["detail"]


def test_the_tiny_model_directory_is_what_save_pretrained_writes(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    directory = save_tiny_llama(tmp_path / "m", shard_size="100KB")
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", INDEX} <= names
