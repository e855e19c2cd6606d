"""What a Hugging Face-format version's files hold, read at finalize before it can be ready.

`contract.formats.HfLayout` checks names and sizes; this reads the bytes that decide whether
a serving process can load the version: `config.json` parses (a JSON object naming its
`model_type` or `architectures`), `model.safetensors.index.json` names only shards the
version has, and each safetensors file's header (8-byte little-endian length + JSON) is
whole, its tensors fill the file exactly and are the ones the index's `weight_map` puts
there. Reads are small ranged reads of the stored blobs (a few KiB per shard, however big
the shard): the standard library only, no torch, no transformers, no safetensors package.
Blocking (the store's reads): callers run it on a thread, outside any transaction.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from typing import Any

from contract.formats import HF_CONFIG, HF_INDEX, HF_SINGLE
from storage.base import ArtifactStore, blob_key

MAX_JSON = 64 * 1024 * 1024  # config and index: an index of a huge model is a few MiB
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own bound on a header
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


class HfLayoutError(ValueError):
    """The message names the file and what is wrong with it."""


def check_hf_files(store: ArtifactStore, files: Iterable[Any]) -> None:
    """Raise `HfLayoutError` unless the version's files (`.path`, `.size`, `.sha256`)
    hold a loadable Hugging Face model."""
    by_path = {f.path: f for f in files}
    reader = _Reader(store, by_path)
    _check_config(reader.json(HF_CONFIG))
    shards = sorted(p for p in by_path if p.endswith(".safetensors") and "/" not in p)
    if HF_INDEX in by_path:
        weight_map = _weight_map(reader.json(HF_INDEX), by_path)
        for shard in sorted(set(weight_map.values())):
            wanted = {t for t, s in weight_map.items() if s == shard}
            _same_tensors(shard, set(reader.tensors(shard)), wanted)
    elif HF_SINGLE in by_path:
        reader.tensors(HF_SINGLE)
    for shard in shards:  # every safetensors file: a bad header fails the load, indexed or not
        reader.tensors(shard)


class _Reader:
    def __init__(self, store: ArtifactStore, by_path: dict[str, Any]) -> None:
        self._store, self._files = store, by_path
        self._seen: dict[str, dict[str, Any]] = {}

    def _read(self, path: str, start: int, length: int) -> bytes:
        ref = self._files[path]
        pieces: list[bytes] = []
        with self._store.open(blob_key(ref.sha256), start, start + length - 1) as stream:
            while (left := length - sum(map(len, pieces))) > 0 and (piece := stream.read(left)):
                pieces.append(piece)
        data = b"".join(pieces)
        if len(data) != length:
            raise HfLayoutError(f"{path}: stored bytes end early ({len(data)} of {length})")
        return data

    def json(self, path: str) -> Any:
        size = self._files[path].size
        if size > MAX_JSON:
            raise HfLayoutError(f"{path} has {size} bytes: too big for a JSON file it should be")
        try:
            return json.loads(self._read(path, 0, size) if size else b"")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HfLayoutError(f"{path} is not valid JSON: {exc}") from None

    def tensors(self, path: str) -> dict[str, Any]:
        """The header's tensors, checked against the file's size and each other."""
        if path not in self._seen:
            self._seen[path] = _parse_header(path, self._files[path].size, self._read)
        return self._seen[path]


def _check_config(config: Any) -> None:
    if not isinstance(config, dict):
        raise HfLayoutError(f"{HF_CONFIG} is not a JSON object")
    if not isinstance(config.get("model_type"), str) and not config.get("architectures"):
        raise HfLayoutError(
            f"{HF_CONFIG} names neither model_type nor architectures: not a transformers config"
        )


def _weight_map(index: Any, by_path: dict[str, Any]) -> dict[str, str]:
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise HfLayoutError(f"{HF_INDEX} has no weight_map (tensor name → shard file)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise HfLayoutError(f"{HF_INDEX}: weight_map's values must be shard file names")
    named = sorted(set(weight_map.values()))
    if missing := [s for s in named if s not in by_path]:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HfLayoutError(
            f"{missing[0]} is named by {HF_INDEX} but not in the version{more}; the version "
            f"has {', '.join(p for p in sorted(by_path) if p.endswith('.safetensors')) or 'none'}"
        )
    if wrong := [s for s in named if not s.endswith(".safetensors")]:
        raise HfLayoutError(f"{HF_INDEX} names {wrong[0]}, which is not a .safetensors file")
    return {str(k): str(v) for k, v in weight_map.items()}


def _parse_header(path: str, size: int, read: Any) -> dict[str, Any]:
    if size < 8:
        raise HfLayoutError(f"{path} has {size} bytes: too few for a safetensors header")
    (length,) = struct.unpack("<Q", read(path, 0, 8))
    if length > MAX_HEADER or 8 + length > size:
        raise HfLayoutError(
            f"{path}: invalid safetensors header: it says its header has {length} bytes, "
            f"the file has {size}"
        )
    try:
        header = json.loads(read(path, 8, length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HfLayoutError(f"{path}: invalid safetensors header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise HfLayoutError(f"{path}: invalid safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    data_bytes, end = size - 8 - length, 0
    for name, info in header.items():
        end = max(end, _tensor_end(path, name, info, data_bytes))
    if end != data_bytes:
        raise HfLayoutError(
            f"{path}: invalid safetensors file: its tensors cover {end} bytes of data, the "
            f"file holds {data_bytes} after the header (truncated or padded)"
        )
    return header


def _tensor_end(path: str, name: str, info: Any, data_bytes: int) -> int:
    bad = f"{path}: invalid safetensors header: tensor {name!r}"
    if not isinstance(info, dict):
        raise HfLayoutError(f"{bad} is not described by an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise HfLayoutError(f"{bad} has an unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise HfLayoutError(f"{bad} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise HfLayoutError(f"{bad} has data_offsets {offsets!r} outside its {data_bytes} bytes")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise HfLayoutError(
            f"{bad}: {dtype}{shape} needs {math.prod(shape) * DTYPE_BYTES[dtype]} bytes, its "
            f"offsets span {offsets[1] - offsets[0]}"
        )
    return int(offsets[1])


def _same_tensors(shard: str, found: set[str], wanted: set[str]) -> None:
    if found == wanted:
        return
    if missing := sorted(wanted - found):
        raise HfLayoutError(
            f"{shard} lacks {len(missing)} tensor(s) {HF_INDEX} puts there, e.g. {missing[0]!r}"
        )
    extra = sorted(found - wanted)
    raise HfLayoutError(
        f"{shard} holds {len(extra)} tensor(s) {HF_INDEX} does not put there, e.g. {extra[0]!r}"
    )
