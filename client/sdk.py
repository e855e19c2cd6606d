"""``Client``: the Python SDK of Modelplane.

```python
from client import Client

mp = Client()                                   # MODELPLANE_URL/TOKEN or saved credentials
v = mp.push("iris", "model.pt", alias="production")
mp.deploy("iris", model="iris", alias="production")
mp.wait_ready("iris")
y = mp.infer("iris", x)["output0"]              # numpy in, numpy out
y = mp.infer("iris", x, direct=True)            # straight to a serving process (client/direct.py)
```
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote

import httpx
import numpy as np
from pydantic import BaseModel

from client.chat import deltas as chat_deltas
from client.config import resolve
from client.direct import DirectRouter
from client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    ModelplaneError,
    NotFound,
    NotReady,
    from_response,
)
from client.modules import serialise
from client.sklearn import convert as sklearn_to_onnx
from client.tensors import HEADER, decode_response, encode_request
from client.transfer import (
    Files,
    ProgressHook,
    Puller,
    Pusher,
    TransferEvent,
    collect,
    hash_files,
    version_path,
)
from client.transport import API, Transport
from contract.enums import DeploymentStatus, ReplicaState
from contract.examples import Example, ExampleError, encode_example
from contract.formats import FormatError, refuse_pickled
from contract.http import describe
from contract.schemas import (
    AliasMove,
    AliasOut,
    DeploymentOut,
    Desired,
    EndpointOut,
    EventOut,
    ModelOut,
    RevisionOut,
    VersionOut,
    VersionSummary,
)
from contract.traffic import VERSION_HEADER, LaneRole, Route, TrafficSeries

M = TypeVar("M", bound=BaseModel)
Selector = int | str
Array = np.ndarray[Any, Any]

FORMAT_BY_SUFFIX = {
    ".pt2": "torch_export",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".keras": "keras",
}


def selector(version: Selector) -> str:
    """``3``, ``"3"``, ``"latest"``, ``"@production"`` or ``"production"`` (an alias)."""
    text = str(version)
    if text.isdigit() or text == "latest" or text.startswith("@"):
        return text
    return f"@{text}"


def guess_format(paths: list[str], config: Path | None = None) -> str | None:
    """The format files' names suggest; ``config``: the local ``config.json`` of a Hugging
    Face directory, read to tell a causal LM from an encoder."""
    suffixes = {Path(p).suffix for p in paths}
    if any(Path(p).name == "saved_model.pb" for p in paths):
        return "tf_savedmodel"  # a SavedModel directory (TF Serving's)
    if "config.json" in paths and ".safetensors" in suffixes:
        return hf_format(config)  # a Hugging Face directory (save_pretrained's)
    if ".safetensors" in suffixes:
        return "safetensors"
    found = {FORMAT_BY_SUFFIX[s] for s in suffixes if s in FORMAT_BY_SUFFIX}
    return found.pop() if len(found) == 1 else None


def hf_format(config: Path | None) -> str:
    """``hf_embedding`` for an encoder's config (no generating architecture), else
    ``hf_causal_lm``."""
    try:
        found = json.loads(config.read_text()) if config is not None else {}
    except (OSError, ValueError):
        return "hf_causal_lm"
    arches = found.get("architectures") or [] if isinstance(found, dict) else []
    generates = ("CausalLM", "LMHeadModel", "ForConditionalGeneration")
    if arches and not any(str(a).endswith(generates) for a in arches):
        return "hf_embedding"
    return "hf_causal_lm"


class Client:
    """A connection to one control plane. Thread-safe for concurrent calls. ``direct``:
    inference calls go straight to the deployment's serving processes, balanced by its
    route (splits and pins honoured, no shadows), instead of through the stable URL; each
    call may say otherwise with its own ``direct=``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        concurrency: int = 4,
        direct: bool = False,
    ) -> None:
        found = resolve(url, token)
        self.url, self.token = found.url, found.token
        self.concurrency = concurrency
        self.direct = direct
        self.transport = Transport(self.url, self.token, timeout=timeout, retries=retries)
        self.router = DirectRouter(self.transport, timeout=timeout)
        self._models: dict[str, str] = {}  # deployment → model (never changes)
        self._inputs: dict[str, list[str]] = {}

    def close(self) -> None:
        self.transport.close()
        self.router.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, token={'***' if self.token else None})"

    # -- plumbing ------------------------------------------------------------------------

    def _get(self, path: str, cls: type[M], **params: Any) -> M:
        return cls.model_validate(self.transport.json("GET", path, params=params or None))

    def _send(self, method: str, path: str, cls: type[M], body: Any = None, **kw: Any) -> M:
        return cls.model_validate(self.transport.json(method, path, json=body, **kw))

    def _pages(self, path: str, cls: type[M], limit: int | None = None, **params: Any) -> list[M]:
        return list(self._iter_pages(path, cls, limit, params))

    def _iter_pages(
        self, path: str, cls: type[M], limit: int | None, params: dict[str, Any]
    ) -> Iterator[M]:
        query = {k: v for k, v in params.items() if v is not None}
        query["limit"] = min(limit or 500, 500)
        count = 0
        while True:
            page = self.transport.json("GET", path, params=query)
            for item in page["items"]:
                yield cls.model_validate(item)
                count += 1
                if limit is not None and count >= limit:
                    return
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    # -- models --------------------------------------------------------------------------

    def list_models(
        self, q: str | None = None, tags: Mapping[str, str] | None = None, limit: int | None = None
    ) -> list[ModelOut]:
        tag = [f"{k}:{v}" for k, v in (tags or {}).items()] or None
        return self._pages(f"{API}/models", ModelOut, limit, q=q, tag=tag)

    def create_model(
        self, name: str, description: str = "", tags: Mapping[str, str] | None = None
    ) -> ModelOut:
        body = {"name": name, "description": description, "tags": dict(tags or {})}
        return self._send("POST", f"{API}/models", ModelOut, body)

    def get_model(self, name: str) -> ModelOut:
        return self._get(f"{API}/models/{name}", ModelOut)

    def ensure_model(self, name: str) -> ModelOut:
        try:
            return self.get_model(name)
        except NotFound:
            pass
        try:
            return self.create_model(name)
        except Conflict:  # created meanwhile by someone else
            return self.get_model(name)

    def update_model(
        self, name: str, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> ModelOut:
        body = {"description": description, "tags": None if tags is None else dict(tags)}
        body = {k: v for k, v in body.items() if v is not None}
        return self._send("PATCH", f"{API}/models/{name}", ModelOut, body)

    def delete_model(self, name: str) -> None:
        self.transport.request("DELETE", f"{API}/models/{name}")

    # -- versions ------------------------------------------------------------------------

    def list_versions(
        self, model: str, status: str | None = None, limit: int | None = None
    ) -> list[VersionSummary]:
        return self._pages(f"{API}/models/{model}/versions", VersionSummary, limit, status=status)

    def get_version(self, model: str, version: Selector = "latest") -> VersionOut:
        return self._get(version_path(model, selector(version)), VersionOut)

    def push(
        self,
        name: str,
        files: Files,
        *,
        alias: str | None = None,
        format: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        signature: Mapping[str, Any] | None = None,
        example: Example | None = None,
        source: str | None = None,
        progress: ProgressHook | None = None,
        resume: bool = True,
    ) -> VersionOut:
        """Upload a file, a directory or a mapping ``{path in version: local file}`` as a
        new ready version of ``name`` (created if missing) and return it.

        Files are hashed locally; files whose bytes the registry already has are not sent;
        small ones go through the control plane, large ones (on S3) straight to the store
        in parallel parts. An interrupted push is continued by the next push of the same
        files (``resume``): its pending version, uploaded files and parts are reused.
        ``format`` defaults to a guess from the file suffixes (``.pt``: torchscript,
        ``.pt2``: torch_export, ``.safetensors``, ``.onnx``). ``example``: one call's
        inputs (an array, a list in the model's input order, or ``{name: array}``), recorded
        in the metadata; where the format keeps no shapes (TorchScript without a
        signature) the serving process warms up on it to learn them. A pickled Python
        object (``.pkl``, ``.joblib``) is refused before anything is sent:
        ``push_sklearn`` converts an estimator to ONNX instead."""
        pairs = collect(files)
        config = dict(pairs).get("config.json")
        fmt = format or guess_format([path for path, _ in pairs], config)
        try:
            refuse_pickled(fmt, [path for path, _ in pairs])
            recorded = {} if example is None else {"example": encode_example(example)}
        except (FormatError, ExampleError) as exc:
            raise ModelplaneError(str(exc)) from None
        pusher = Pusher(self.transport, progress, self.concurrency)
        local = hash_files(pairs, pusher.emit)
        sig = dict(signature) if signature is not None else None
        self.ensure_model(name)
        version = pusher.find_pending(name, local, fmt, sig) if resume else None
        fields = {"description": description, "tags": dict(tags or {})}
        fields["metadata"] = {**(metadata or {}), **recorded}
        if version is None:
            body = {
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in local],
                "format": fmt,
                "signature": sig,
                "source": source,
                **fields,
            }
            version = self._send("POST", f"{API}/models/{name}/versions", VersionOut, body)
        elif any(getattr(version, k) != v for k, v in fields.items()):
            self.transport.request("PATCH", version_path(name, version.version), json=fields)
        pusher.upload_missing(version, local)
        ready = pusher.finalize(name, version.version)
        if alias is not None:
            self.set_alias(name, alias, ready.version)
        return ready

    def push_module(
        self,
        name: str,
        module: Any,
        example_inputs: Any,
        format: str = "torchscript",
        *,
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        batched: bool = True,
        progress: ProgressHook | None = None,
    ) -> VersionOut:
        """Serialise a live ``torch.nn.Module`` (``torchscript`` or ``torch_export``) and
        push it with the input/output signature seen on ``example_inputs`` (a tensor or a
        tuple): names, v2 datatypes, shapes with -1 for the batch dimension."""
        with tempfile.TemporaryDirectory(prefix="modelplane-") as tmp:
            path, sig, meta = serialise(module, example_inputs, format, Path(tmp), batched=batched)
            made = _Made(path, format, f"push_module:{_qualname(module)}", sig, meta)
            return self._push_made(name, made, alias, description, tags, metadata, progress)

    def push_sklearn(
        self,
        name: str,
        estimator: Any,
        example: Any,
        *,
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressHook | None = None,
    ) -> VersionOut:
        """Convert a fitted scikit-learn estimator (or pipeline) to ONNX with skl2onnx and
        push it as an ``onnx`` version, a few rows of ``example`` (its input features)
        recorded with it. Classifiers answer ``label`` and ``probabilities``; regressors
        ``variable``. Needs ``pip install 'modelplane[sklearn]'``."""
        with tempfile.TemporaryDirectory(prefix="modelplane-") as tmp:
            path = Path(tmp) / "model.onnx"
            sig, meta = sklearn_to_onnx(estimator, example, path)
            made = _Made(path, "onnx", f"push_sklearn:{meta['estimator']}", sig, meta)
            return self._push_made(name, made, alias, description, tags, metadata, progress)

    def push_keras(
        self,
        name: str,
        model: Any,
        example: Any,
        *,
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        progress: ProgressHook | None = None,
    ) -> VersionOut:
        """Save a Keras 3 model (``model.save``, a ``.keras`` file) and push it as a
        ``keras`` version with the model's signature and a few rows of ``example`` (one
        array, a list in input order, or ``{name: array}``). Served by Keras on the torch
        backend with ``safe_mode`` on: ``Lambda`` layers need the deployment's
        ``allow_pickle``. Needs ``keras`` here (any backend)."""
        from client.keras import save as keras_save

        with tempfile.TemporaryDirectory(prefix="modelplane-") as tmp:
            path = Path(tmp) / "model.keras"
            sig, meta = keras_save(model, example, path)
            made = _Made(path, "keras", f"push_keras:{_qualname(model)}", sig, meta)
            return self._push_made(name, made, alias, description, tags, metadata, progress)

    def push_pretrained(
        self,
        name: str,
        model: Any,
        tokenizer: Any = None,
        *,
        format: str = "hf_causal_lm",
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_shard_size: str | int = "5GB",
        progress: ProgressHook | None = None,
    ) -> VersionOut:
        """Save a transformers model and its tokenizer with ``save_pretrained`` (weights as
        safetensors, in shards past ``max_shard_size``) and push the directory as a
        ``hf_causal_lm`` (or ``hf_embedding``) version: the shards go up in parallel, and
        the registry checks the index and each shard's header before it is ready. The
        model's hub id and revision, when known, become the version's ``source`` and its
        ``metadata.huggingface``. Needs ``transformers`` here (the objects bring it)."""
        from client.pretrained import check_format, provenance, save

        check_format(format)
        source, meta = provenance(model)
        with tempfile.TemporaryDirectory(prefix="modelplane-") as tmp:
            save(model, tokenizer, Path(tmp), max_shard_size)
            made = _Made(Path(tmp), format, source, None, meta)
            return self._push_made(name, made, alias, description, tags, metadata, progress)

    def _push_made(
        self,
        name: str,
        made: _Made,
        alias: str | None,
        description: str,
        tags: Mapping[str, str] | None,
        metadata: Mapping[str, Any] | None,
        progress: ProgressHook | None,
    ) -> VersionOut:
        """Push what a ``push_*`` helper serialised (a file, or a directory) with what it
        learned of the model; the caller's ``metadata`` wins over the learned."""
        return self.push(
            name,
            made.path if made.path.is_dir() else {made.path.name: made.path},
            alias=alias,
            format=made.format,
            description=description,
            tags=tags,
            metadata={**made.metadata, **(metadata or {})},
            signature=made.signature,
            source=made.source,
            progress=progress,
            resume=False,
        )

    def pull(
        self,
        name: str,
        version: Selector = "latest",
        dest: str | os.PathLike[str] = ".",
        *,
        progress: ProgressHook | None = None,
    ) -> VersionOut:
        """Download every file of the version under ``dest`` (``dest/path``), each checked
        against its sha256. A file already there is kept; a ``.part`` left by an
        interrupted pull is continued from where it stopped."""
        found = self.get_version(name, version)
        puller = Puller(self.transport, progress, self.concurrency)
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        for f in found.files:
            puller.download(name, found.version, f, root)
        return found

    # -- aliases -------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: int) -> AliasOut:
        path = f"{API}/models/{model}/aliases/{alias}"
        return self._send("PUT", path, AliasOut, {"version": version})

    def get_alias(self, model: str, alias: str) -> AliasOut:
        return self._get(f"{API}/models/{model}/aliases/{alias}", AliasOut)

    def list_aliases(self, model: str) -> list[AliasOut]:
        return self._pages(f"{API}/models/{model}/aliases", AliasOut)

    def alias_history(self, model: str, alias: str, limit: int | None = None) -> list[AliasMove]:
        return self._pages(f"{API}/models/{model}/aliases/{alias}/history", AliasMove, limit)

    def rollback_alias(self, model: str, alias: str) -> AliasOut:
        path = f"{API}/models/{model}/aliases/{alias}/rollback"
        return self._send("POST", path, AliasOut)

    def delete_alias(self, model: str, alias: str) -> None:
        self.transport.request("DELETE", f"{API}/models/{model}/aliases/{alias}")

    # -- deployments ---------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        model: str | None = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int | None = None,
        gpus: int | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,
        max_delay_ms: float | None = None,
        allow_pickle: bool | None = None,
        optimize: str | Mapping[str, Any] | None = None,
        traffic: Mapping[int, float] | Sequence[Mapping[str, Any]] | None = None,
        shadow: Mapping[str, Any] | Literal[False] | None = None,
        canary: Mapping[str, Any] | Literal[False] | None = None,
    ) -> DeploymentOut:
        """Create the deployment (``model`` defaults to ``name``), or update it when it
        exists: a new version, alias or settings make a new revision, rolled out replica by
        replica. Give ``version`` or ``alias`` (the alias is then followed). ``optimize`` is a
        mode (``int8_dynamic``, ``fp16``, ``bf16``, ``auto``, ``none``) or ``{"mode": ...,
        "max_abs_error": ..., "max_rel_error": ..., "min_top1_agreement": ..., "unchecked":
        ...}``: checked against the version's example before the replica takes traffic.

        ``traffic``: a fixed split kept live instead of one version, ``{7: 90, 8: 10}`` or
        ``[{"version": 7, "percent": 90, "replicas": 2}, ...]``. ``shadow``: ``{"version": 9,
        "percent": 20}`` mirrors that share of calls (``False`` removes it). ``canary``:
        ``{"steps": [10, 50, 100], "interval_s": 60, "max_error_rate": 0.01, "max_p99_ms":
        250, "min_calls": 200}`` makes this and later version changes canary rollouts gated
        by the gateways' counts (``False`` goes back to replica-by-replica updates)."""
        if version is not None and alias is not None:
            raise ModelplaneError("give a version or an alias, not both")
        settings: dict[str, Any] = {
            "version": version,
            "alias": alias,
            "replicas": replicas,
            "gpus": gpus,
            "device": device,
            "allow_pickle": allow_pickle,
            "optimize": optimize,
            "traffic": _traffic(traffic),
        }
        batching = {"max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms}
        if any(v is not None for v in batching.values()):
            settings["batching"] = {k: v for k, v in batching.items() if v is not None}
        settings = {k: v for k, v in settings.items() if v is not None}
        if shadow is not None:  # False: an explicit null removes it
            settings["shadow"] = dict(shadow) if shadow else None
        if canary is not None:
            settings["strategy"] = {"canary": dict(canary)} if canary else None
        try:
            current = self.get_deployment(name)
        except NotFound:
            current = None
        if current is None:
            if version is None and alias is None and traffic is None:
                raise ModelplaneError(
                    "a new deployment needs a version, an alias or a traffic split"
                )
            if gpus and "device" not in settings:
                settings["device"] = "cuda"
            body = {"name": name, "model": model or name, **settings}
            return self._send("POST", f"{API}/deployments", DeploymentOut, body)
        if model is not None and model != current.model:
            raise ModelplaneError(
                f"deployment {name!r} serves model {current.model!r}, not {model!r}; "
                "delete it first or pick another name"
            )
        return self._send("PATCH", f"{API}/deployments/{name}", DeploymentOut, settings)

    def get_deployment(self, name: str) -> DeploymentOut:
        return self._get(f"{API}/deployments/{name}", DeploymentOut)

    def list_deployments(self) -> list[DeploymentOut]:
        return self._pages(f"{API}/deployments", DeploymentOut)

    def delete_deployment(self, name: str) -> DeploymentOut | None:
        """Stop it: the deployment while its replicas drain, ``None`` once it is gone."""
        answer = self.transport.request("DELETE", f"{API}/deployments/{name}")
        self._models.pop(name, None)
        self._inputs.pop(name, None)
        self.router.forget(name)
        return DeploymentOut.model_validate(answer.json()) if answer.status_code == 202 else None

    def revisions(self, name: str) -> list[RevisionOut]:
        return self._pages(f"{API}/deployments/{name}/revisions", RevisionOut)

    def rollback(self, name: str, to_revision: int | None = None) -> DeploymentOut:
        """A new revision equal to ``to_revision`` (default: the one before the current),
        rolled out like any update."""
        body = {"to_revision": to_revision} if to_revision is not None else None
        return self._send("POST", f"{API}/deployments/{name}/rollback", DeploymentOut, body)

    def endpoints(self, name: str) -> list[EndpointOut]:
        return self._pages(f"{API}/deployments/{name}/endpoints", EndpointOut)

    def route(self, name: str) -> Route:
        """The deployment as a gateway routes it: its lanes (revision, version, role,
        share) with their ready endpoint URLs."""
        return self._get(f"{API}/deployments/{name}/route", Route)

    def traffic(self, name: str, minutes: int = 15, bucket_s: float | None = None) -> TrafficSeries:
        """Calls/s, error rate and p50/p99 per revision over the last ``minutes``, as the
        gateways counted them, with the lanes and the canary."""
        path = f"{API}/deployments/{name}/traffic"
        params = {"minutes": minutes, **({"bucket_s": bucket_s} if bucket_s else {})}
        return self._get(path, TrafficSeries, **params)

    def promote_canary(self, name: str) -> DeploymentOut:
        """Give the canary all traffic now (the old revision drains)."""
        return self._send("POST", f"{API}/deployments/{name}/canary/promote", DeploymentOut)

    def abort_canary(self, name: str) -> DeploymentOut:
        """Send all traffic back to the base revision now and stop the canary."""
        return self._send("POST", f"{API}/deployments/{name}/canary/abort", DeploymentOut)

    def wait_ready(self, name: str, timeout: float = 300.0, interval: float = 0.5) -> DeploymentOut:
        """Until the current revision serves on every replica and the stable URL answers.
        Raises ``NotReady`` when the rollout fails or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.get_deployment(name)
            if current.status == DeploymentStatus.failed:
                raise NotReady(f"deployment {name!r} failed: {current.status_reason}")
            if self._settled(current) and self._stable_url_ready(name):
                return current
            if time.monotonic() >= deadline:
                why = f" ({current.status_reason})" if current.status_reason else ""
                raise NotReady(
                    f"deployment {name!r} not ready after {timeout:.0f}s: "
                    f"{current.status.value}{why}"
                )
            time.sleep(interval)

    @staticmethod
    def _settled(d: DeploymentOut) -> bool:
        """Every replica ready, of the current revision or of a side lane (a split, a
        shadow, a canary): an old primary still serving is not settled."""
        live = [r for r in d.observed.replicas if r.desired == Desired.run]
        side = {lane.revision for lane in d.lanes if lane.role is not LaneRole.primary}
        return (
            d.status == DeploymentStatus.available
            and sum(r.revision == d.revision for r in live) >= d.replicas
            and all(
                r.state == ReplicaState.ready and (r.revision == d.revision or r.revision in side)
                for r in live
            )
        )

    def _stable_url_ready(self, name: str) -> bool:
        answer = self.transport.request("GET", f"/serve/{name}/v2/health/ready", expect=(503,))
        return answer.status_code == 200

    # -- inference -----------------------------------------------------------------------

    def model_of(self, deployment: str) -> str:
        if deployment not in self._models:
            self._models[deployment] = self.get_deployment(deployment).model
        return self._models[deployment]

    def _serve(
        self,
        deployment: str,
        method: str,
        path: str,
        *,
        direct: bool | None,
        version: int | None,
        idempotent: bool | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """A protocol call (``path`` such as ``/v2/models/m/infer``) through the stable URL,
        or straight to a serving process in direct mode; ``version`` pins it to that
        version's endpoints (the ``Modelplane-Version`` header at the stable URL)."""
        if self.direct if direct is None else direct:
            return self.router.request(
                deployment, method, path, version=version, idempotent=idempotent, **kw
            )
        if version is not None:
            kw["headers"] = {**kw.get("headers", {}), VERSION_HEADER: str(version)}
        return self.transport.request(
            method, f"/serve/{deployment}{path}", idempotent=idempotent, **kw
        )

    def model_metadata(
        self, deployment: str, *, direct: bool | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """The v2 model metadata (inputs, outputs) as a serving process of it answers."""
        model = self.model_of(deployment)
        path = f"/v2/models/{quote(model)}"
        answer: dict[str, Any] = self._serve(
            deployment, "GET", path, direct=direct, version=version
        ).json()
        return answer

    def _input_names(self, deployment: str, direct: bool | None) -> list[str]:
        if deployment not in self._inputs:
            doc = self.model_metadata(deployment, direct=direct)
            self._inputs[deployment] = [i["name"] for i in doc.get("inputs", [])]
        return self._inputs[deployment]

    def infer(
        self,
        deployment: str,
        inputs: Array | Sequence[Array] | Mapping[str, Array],
        outputs: list[str] | None = None,
        *,
        version: int | None = None,
        direct: bool | None = None,
    ) -> dict[str, Array]:
        """Call the deployment with binary tensors: ``inputs`` is one array (a one-input
        model), arrays in the model's input order, or a mapping by input name. Answers every
        output (or those named) by name. Through the stable URL, or with ``direct`` (default:
        the client's) straight to a serving process; ``version`` pins the call to the
        endpoints of that version (a version the deployment does not serve: ``NotFound``
        naming those it does)."""
        named: Mapping[str, Any]
        if isinstance(inputs, Mapping):
            named = inputs
        else:
            arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            names = self._input_names(deployment, direct)
            if len(names) != len(arrays):
                raise ModelplaneError(
                    f"deployment {deployment!r} takes {len(names)} inputs {names}, "
                    f"got {len(arrays)} arrays"
                )
            named = dict(zip(names, arrays, strict=True))
        body, header = encode_request(named, outputs)
        model = self.model_of(deployment)
        answer = self._serve(
            deployment,
            "POST",
            f"/v2/models/{quote(model)}/infer",
            direct=direct,
            version=version,
            content=body,
            headers={HEADER: str(header), "Content-Type": "application/octet-stream"},
            idempotent=True,
        )
        length = answer.headers.get(HEADER)
        return decode_response(answer.content, int(length) if length else None)

    @overload
    def chat(
        self,
        deployment: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[False] = False,
        **params: Any,
    ) -> dict[str, Any]: ...

    @overload
    def chat(
        self,
        deployment: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[True],
        **params: Any,
    ) -> Iterator[str]: ...

    def chat(
        self,
        deployment: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: bool = False,
        **params: Any,
    ) -> dict[str, Any] | Iterator[str]:
        """A chat completion from a language-model deployment through its stable URL
        (``/serve/{deployment}/v1/chat/completions``, OpenAI's API): ``messages`` as OpenAI
        spells them, ``params`` such as ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
        ``stop``. Answers OpenAI's completion object, or with ``stream=True`` yields the
        text of each chunk as the model writes it (the call starts on the first ``next``;
        closing the iterator ends the stream, and the server stops generating)."""
        body = {
            "model": params.pop("model", None) or self.served_model(deployment),
            "messages": [dict(m) for m in messages],
            **params,
        }
        path = f"/serve/{deployment}/v1/chat/completions"
        if not stream:
            answer: dict[str, Any] = self.transport.json("POST", path, json=body)
            return answer
        return self._chat_stream(path, {**body, "stream": True})

    def served_model(self, deployment: str) -> str:
        """The model id a language-model deployment answers to (its ``/v1/models``)."""
        key = f"openai:{deployment}"
        if key not in self._models:
            listed = self.transport.json("GET", f"/serve/{deployment}/v1/models")
            data = listed.get("data") if isinstance(listed, dict) else None
            if not data:
                raise ModelplaneError(f"deployment {deployment!r} lists no model at /v1/models")
            self._models[key] = str(data[0]["id"])
        return self._models[key]

    def _chat_stream(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        try:
            with self.transport.http.stream("POST", path, json=body, timeout=None) as answer:
                if not answer.is_success:
                    answer.read()
                    raise from_response(answer)
                yield from chat_deltas(answer.iter_lines())
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {describe(exc)}") from exc

    # -- events --------------------------------------------------------------------------

    def events(
        self,
        *,
        model: str | None = None,
        action: str | None = None,
        since: datetime | str | None = None,
        limit: int | None = 100,
        newest_first: bool = False,
    ) -> list[EventOut]:
        """Audit events, oldest first (or newest first: the recent ones)."""
        when = since.isoformat() if isinstance(since, datetime) else since
        order = "desc" if newest_first else None
        return self._pages(
            f"{API}/events", EventOut, limit, model=model, action=action, since=when, order=order
        )

    def health(self) -> bool:
        try:
            return self.transport.request("GET", "/readyz", expect=(503,)).status_code == 200
        except ApiError:
            return False


__all__ = ["Client", "TransferEvent", "selector"]


@dataclass(frozen=True)
class _Made:
    """A model serialised by a ``push_*`` helper into a temporary directory."""

    path: Path
    format: str
    source: str | None
    signature: Any
    metadata: Mapping[str, Any]


def _traffic(
    split: Mapping[int, float] | Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]] | None:
    """``{7: 90, 8: 10}`` or a list of entries, as the API's ``traffic``."""
    if split is None:
        return None
    if isinstance(split, Mapping):
        return [{"version": int(v), "percent": p} for v, p in split.items()]
    return [dict(entry) for entry in split]


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
