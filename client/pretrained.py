"""A live Hugging Face model and tokenizer to a version's directory, for
``Client.push_pretrained``.

Saved with their own ``save_pretrained`` (weights as safetensors, sharded past
``max_shard_size``, never pickle) into a temporary directory that is pushed as one
multi-file version (format ``hf_causal_lm`` or ``hf_embedding``). Where the model came from
(its hub id or path, and the commit it was loaded at) is recorded when known. Nothing here
imports transformers: the objects passed in bring it (``pip install 'modelplane[llm]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.errors import ModelplaneError

FORMATS = ("hf_causal_lm", "hf_embedding")


def save(model: Any, tokenizer: Any, directory: Path, max_shard_size: str | int) -> None:
    """``model`` and ``tokenizer`` saved side by side in ``directory`` as safetensors."""
    if not callable(getattr(model, "save_pretrained", None)):
        raise ModelplaneError(
            f"push_pretrained needs a transformers model (with save_pretrained), got "
            f"{type(model).__module__}.{type(model).__qualname__}"
        )
    model.save_pretrained(directory, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if not any(directory.glob("*.safetensors")):
        raise ModelplaneError(f"{type(model).__qualname__}.save_pretrained wrote no safetensors")


def provenance(model: Any) -> tuple[str | None, dict[str, Any]]:
    """``(source, metadata)``: the model's hub id (or the path it was loaded from) and
    revision when transformers kept them, its architecture and size."""
    config = getattr(model, "config", None)
    model_id = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None)
    revision = getattr(config, "_commit_hash", None)
    hf: dict[str, Any] = {
        "model_id": str(model_id) if model_id else None,
        "revision": str(revision) if revision else None,
        "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or [type(model).__name__]),
    }
    count = getattr(model, "num_parameters", None)
    if callable(count):
        hf["parameters"] = int(count())
    source = None
    if model_id:
        source = f"huggingface:{model_id}" + (f"@{revision}" if revision else "")
    return source, {"huggingface": hf}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ModelplaneError(f"push_pretrained pushes {' or '.join(FORMATS)}, not {fmt!r}")
