"""What happens to artifact files before a runtime sees them: digests and the signature
(with the version's recorded example input, `contract.examples`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from contract.examples import EXAMPLE_KEY, ExampleError, check_example
from serving.protocol import DATATYPES, TensorSpec


class ArtifactError(Exception):
    """The artifact cannot be served as given; the process refuses to start."""


class DigestMismatch(ArtifactError):
    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


@dataclass(slots=True)
class Signature:
    """A version's declared inputs and outputs (either list may be empty: then inferred),
    and its recorded example input (`contract.examples` form), which the runtime's warm-up
    runs on where the format keeps no shapes."""

    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    example: dict[str, Any] | None = None


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_sha256(path: Path, expected: list[str]) -> None:
    """Check `HEX` (path is a file) or `RELPATH=HEX` entries (path is a directory)."""
    for entry in expected:
        relpath, sep, digest = entry.rpartition("=")
        target = path / relpath if sep else path
        if sep and (Path(relpath).is_absolute() or ".." in Path(relpath).parts):
            raise ArtifactError(f"sha256 entry {entry!r} must name a file inside {path}")
        if target.is_dir():
            raise ArtifactError(f"{target} is a directory: give --sha256 RELPATH=HEX per file")
        actual = file_sha256(target)
        if actual != digest.lower():
            raise DigestMismatch(target, digest.lower(), actual)


def parse_signature(text: str | None) -> Signature:
    """`text` is JSON (`{"inputs": [...], "outputs": [...]}`) or a path to such a file."""
    if text is None:
        return Signature()
    source = text if text.lstrip().startswith("{") else Path(text).read_text()
    try:
        doc = orjson.loads(source)
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"signature is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ArtifactError("signature must be a JSON object with 'inputs' and 'outputs'")
    example = doc.get(EXAMPLE_KEY)
    if example is not None:
        try:
            check_example(example)
        except ExampleError as exc:
            raise ArtifactError(f"signature: {exc}") from None
    return Signature(
        inputs=[_spec(item) for item in doc.get("inputs") or []],
        outputs=[_spec(item) for item in doc.get("outputs") or []],
        example=example,
    )


def _spec(item: Any) -> TensorSpec:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ArtifactError(f"signature entry {item!r} needs a 'name'")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise ArtifactError(f"signature entry {item['name']!r}: unknown datatype {datatype!r}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
        raise ArtifactError(f"signature entry {item['name']!r}: shape must list ints (-1: any)")
    return TensorSpec(item["name"], datatype, shape)
