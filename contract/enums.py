"""Enums both ends of a process boundary spell the same way."""

from __future__ import annotations

from enum import StrEnum


class Device(StrEnum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class VersionStatus(StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"
    archived = "archived"


class DeploymentStatus(StrEnum):
    pending = "pending"  # no replica of the current revision placed yet (see status_reason)
    rolling_out = "rolling_out"
    available = "available"
    degraded = "degraded"
    failed = "failed"  # the current revision failed; the previous one keeps serving
    deleting = "deleting"


class ReplicaState(StrEnum):
    pending = "pending"
    pulling = "pulling"
    loading = "loading"
    warming = "warming"
    ready = "ready"
    draining = "draining"
    stopped = "stopped"
    unhealthy = "unhealthy"
    failed = "failed"


class EndpointStatus(StrEnum):
    """What a serving process reports of itself (``pulling`` is the worker's, before it)."""

    pulling = "pulling"
    loading = "loading"
    warming = "warming"
    ready = "ready"
    draining = "draining"
    unhealthy = "unhealthy"
    stopped = "stopped"
    failed = "failed"


class ModelFormat(StrEnum):
    """The built-in artifact formats (``pickle`` only served when allowed). Which files make
    each, and which runtime serves it: ``contract.formats``; a third party's runtime adds
    its own through the ``modelplane.runtimes`` entry points."""

    torchscript = "torchscript"
    torch_export = "torch_export"
    safetensors = "safetensors"
    pickle = "pickle"
    onnx = "onnx"
    keras = "keras"
    tf_savedmodel = "tf_savedmodel"
    hf_causal_lm = "hf_causal_lm"  # a Hugging Face directory: config, tokenizer, safetensors
    hf_embedding = "hf_embedding"  # the same for an encoder whose pooled output is served
