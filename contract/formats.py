"""Artifact formats: which files make a version of each format, and which file is the graph.

One table for every process, so they cannot disagree: the registry checks a version's files
against its format (an unknown format is 422 listing the known ones; files that cannot make
it are 422 before anything deploys), the deployer asks it what a serving process is given
(the version's lone file, or its directory), and serving's runtimes find their graph file
with the same rule. Reading a file list needs no framework: standard library only.

A third party's runtime joins through the ``modelplane.runtimes`` entry-point group (name:
the format, value: its ``Runtime`` class, see ``serving/runtimes/base.py``). Its format is
then known everywhere, and when its class has a ``layouts`` mapping (format → ``Layout``)
the same checks apply to it. Loading that entry point must stay light: the module imports
its framework inside ``load()``, never at the top (the registry and the deployer load it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import PurePosixPath
from typing import Any

from contract.enums import ModelFormat

log = logging.getLogger("modelplane.formats")

RUNTIMES_GROUP = "modelplane.runtimes"
PICKLED = (".pkl", ".pickle", ".joblib")  # Python objects that run code when loaded
PROTOBUF_LIMIT = 2**31 - 1  # one serialised protobuf (an ONNX graph with its weights inline)
TORCHSCRIPT = (".pt", ".ts", ".torchscript")
SHOWN_FILES = 8  # paths named in an error before "…"

Files = Iterable[Any]  # (path, size) pairs, or objects with `.path` and `.size`


class FormatError(ValueError):
    """A version's format or files cannot be served; the message says what would do."""


class UnknownFormat(FormatError):
    def __init__(self, fmt: str, known: list[str]) -> None:
        super().__init__(f"unknown format {fmt!r}; known formats: {', '.join(known)}")
        self.format, self.known = fmt, known


class LayoutError(FormatError):
    """The files cannot make a version of the format."""


class PickledObject(LayoutError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is a pickled Python object (scikit-learn's pickle or joblib), which runs "
            "code when loaded and is never served: convert the estimator to ONNX with skl2onnx "
            "(Client.push_sklearn(name, estimator, example) does it) and push the .onnx file "
            "as format onnx"
        )


@dataclass(frozen=True, slots=True)
class Artifact:
    """What a version's files make. `graph` is the file the runtime loads (a path inside the
    version). A serving process is given that file itself when `single_file`, else the
    version's directory. `keeps_shapes`: the graph records its tensors' datatypes and shapes
    (TorchScript does not: without a signature they are learned, see serving's runtime)."""

    format: str
    graph: str
    single_file: bool
    keeps_shapes: bool = True


@dataclass(frozen=True, slots=True)
class Layout:
    """Which files make a version of `format`: exactly one graph file, found by its suffix
    (`suffixes`) or its name in any directory (`names`); `needs`: some other file must end
    with one of these; any other files ride along (configs, labels, external weights)."""

    format: str
    what: str  # the graph file, in an error message: "one ONNX file (.onnx)"
    suffixes: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    needs_what: str = ""
    shapeless: tuple[str, ...] = ()  # graph suffixes that keep no tensor shapes
    directory: bool = False  # served as the version's directory even when it is one file
    max_graph_bytes: int | None = None
    too_big: str = ""
    hint: str = ""  # how to make one, after an error

    def check(self, files: Files) -> Artifact:
        """The artifact `files` (a version's manifest) make; `LayoutError` saying why not."""
        pairs = _pairs(files)
        graphs = [(path, size) for path, size in pairs if self._is_graph(path)]
        if len(graphs) != 1:
            found = "none" if not graphs else _names([p for p, _ in graphs])
            raise LayoutError(
                f"format {self.format} needs exactly {self.what}; found {found} among "
                f"{_names([p for p, _ in pairs])}{self._hint()}"
            )
        graph, size = graphs[0]
        if size == 0:
            raise LayoutError(f"format {self.format}: the graph file {graph} is empty")
        if self.max_graph_bytes is not None and size > self.max_graph_bytes:
            raise LayoutError(f"format {self.format}: {graph} has {size} bytes; {self.too_big}")
        if self.needs and not any(p.lower().endswith(self.needs) for p, _ in pairs if p != graph):
            raise LayoutError(
                f"format {self.format} needs {self.needs_what} beside {graph}{self._hint()}"
            )
        return Artifact(
            self.format,
            graph,
            single_file=len(pairs) == 1 and not self.directory,
            keeps_shapes=not graph.lower().endswith(self.shapeless) if self.shapeless else True,
        )

    def _is_graph(self, path: str) -> bool:
        lower = path.lower()
        return lower.endswith(self.suffixes) or PurePosixPath(lower).name in self.names

    def _hint(self) -> str:
        return f" ({self.hint})" if self.hint else ""


HF_CONFIG = "config.json"
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
HF_TOKENIZERS = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model")
HF_PICKLED = (".bin", ".pt", ".pth", ".ckpt")  # torch.save'd state dicts: run code when loaded
HF_HINT = (
    "model.save_pretrained(dir, safe_serialization=True) and tokenizer.save_pretrained(dir), "
    "or Client.push_pretrained(name, model, tokenizer)"
)


@dataclass(frozen=True, slots=True)
class HfLayout(Layout):
    """A Hugging Face directory as ``save_pretrained`` writes it: ``config.json`` (the
    graph: the runtime builds the model from it), a tokenizer, and the weights as
    ``model.safetensors`` or shards listed by ``model.safetensors.index.json``. Pickled
    weights (``pytorch_model.bin``) are refused unless the version allows pickle. What the
    files hold (the index's shards, the safetensors headers) the registry reads at finalize
    (``registry/services/hf_layout.py``); this checks the names and sizes only."""

    def check(self, files: Files, *, allow_pickle: bool = False) -> Artifact:
        pairs = dict(_pairs(files))
        listed = _names(sorted(pairs))
        if HF_CONFIG not in pairs:
            raise LayoutError(
                f"format {self.format} needs {HF_CONFIG} at the top of the version; found "
                f"none among {listed} ({self.hint})"
            )
        pickled = sorted(p for p in pairs if _hf_weights(p) and p.lower().endswith(HF_PICKLED))
        if pickled and not allow_pickle:
            raise LayoutError(
                f"format {self.format}: {pickled[0]} holds pickled weights, which run code when "
                "loaded and are refused: save with safe_serialization=True (model.safetensors) "
                "or create the version with metadata allow_pickle: true"
            )
        shards = sorted(p for p in pairs if p.endswith(".safetensors") and "/" not in p)
        if not shards and not pickled:
            raise LayoutError(
                f"format {self.format} needs its weights as {HF_SINGLE} or shards listed by "
                f"{HF_INDEX}; found none among {listed} ({self.hint})"
            )
        if len(shards) > 1 and HF_INDEX not in pairs:
            raise LayoutError(
                f"format {self.format}: {len(shards)} safetensors files ({_names(shards)}) "
                f"but no {HF_INDEX} saying which tensor is in which"
            )
        for path in shards:
            if pairs[path] < 8:
                raise LayoutError(
                    f"format {self.format}: {path} has {pairs[path]} bytes, "
                    "too few for a safetensors header"
                )
        if not any(PurePosixPath(p).name in HF_TOKENIZERS for p in pairs):
            raise LayoutError(
                f"format {self.format} needs a tokenizer ({', '.join(HF_TOKENIZERS[:2])} with "
                f"tokenizer_config.json) beside {HF_CONFIG}; found none among {listed} "
                "(tokenizer.save_pretrained(dir))"
            )
        return Artifact(self.format, HF_CONFIG, single_file=False)


def _hf_weights(path: str) -> bool:
    name = PurePosixPath(path.lower()).name
    return name.startswith(("pytorch_model", "model", "tf_model", "flax_model")) or (
        name.endswith((".pt", ".pth", ".ckpt"))
    )


LAYOUTS: dict[str, Layout] = {
    str(layout.format): layout
    for layout in (
        Layout(
            ModelFormat.torchscript,
            "one TorchScript file (.pt, .ts, .torchscript)",
            suffixes=TORCHSCRIPT,
            shapeless=TORCHSCRIPT,
            hint="torch.jit.save, or Client.push_module",
        ),
        Layout(
            ModelFormat.torch_export,
            "one torch.export program (.pt2)",
            suffixes=(".pt2",),
            hint="torch.export.save, or Client.push_module(..., format='torch_export')",
        ),
        Layout(
            ModelFormat.safetensors,
            "one graph file (.pt, .ts, .torchscript, .pt2) for the weights to be loaded into",
            suffixes=(*TORCHSCRIPT, ".pt2"),
            needs=(".safetensors",),
            needs_what="at least one .safetensors weights file",
            shapeless=TORCHSCRIPT,
            directory=True,
        ),
        Layout(
            ModelFormat.pickle,
            "one pickled torch module (.pt, .pth, .pkl, .pickle)",
            suffixes=(".pt", ".pth", ".pkl", ".pickle"),
            shapeless=(".pt", ".pth", ".pkl", ".pickle"),
            hint="torch.save of a whole module; served only with allow_pickle",
        ),
        Layout(
            ModelFormat.onnx,
            "one ONNX file (.onnx)",
            suffixes=(".onnx",),
            max_graph_bytes=PROTOBUF_LIMIT,
            too_big="an ONNX file holds at most 2 GiB: save the weights as external data "
            "(onnx.save_model(model, path, save_as_external_data=True)) and push the files "
            "together",
            hint="torch.onnx.export, skl2onnx, tf2onnx; external data files ride along",
        ),
        Layout(
            ModelFormat.keras,
            "one Keras 3 file (.keras)",
            suffixes=(".keras",),
            hint="model.save('model.keras')",
        ),
        Layout(
            ModelFormat.tf_savedmodel,
            "one SavedModel (saved_model.pb, with its variables/ beside it)",
            names=("saved_model.pb", "saved_model.pbtxt"),
            needs=("variables/variables.index",),
            needs_what="variables/variables.index (and its variables.data-* shards)",
            directory=True,
            hint="tf.saved_model.save(model, directory): push that directory",
        ),
        HfLayout(
            ModelFormat.hf_causal_lm,
            "a Hugging Face causal LM directory (config.json, tokenizer, safetensors)",
            names=(HF_CONFIG,),
            directory=True,
            hint=HF_HINT,
        ),
        HfLayout(
            ModelFormat.hf_embedding,
            "a Hugging Face encoder directory (config.json, tokenizer, safetensors)",
            names=(HF_CONFIG,),
            directory=True,
            hint=HF_HINT,
        ),
    )
}

HF_FORMATS = frozenset({str(ModelFormat.hf_causal_lm), str(ModelFormat.hf_embedding)})


def known_formats() -> list[str]:
    """Every format a version may have: the built-in ones and the installed runtimes'."""
    return sorted({str(f) for f in LAYOUTS} | set(runtime_entry_points()))


def layout_for(fmt: str) -> Layout | None:
    """`fmt`'s layout; None for a third party's format that brings none (any files do).
    Raises `UnknownFormat` (listing the known ones) when no table or runtime knows it."""
    if (layout := LAYOUTS.get(fmt)) is not None:
        return layout
    entry = runtime_entry_points().get(fmt)
    if entry is None:
        raise UnknownFormat(fmt, known_formats())
    return _third_party_layout(entry)


def artifact(fmt: str, files: Files, *, allow_pickle: bool = False) -> Artifact | None:
    """What `files` make as `fmt` (None: a third party's format without a layout).
    Raises `UnknownFormat`, `PickledObject` or `LayoutError`. `allow_pickle`: a Hugging
    Face directory may hold pickled weights (`pytorch_model.bin`)."""
    pairs = _pairs(files)
    refuse_pickled(fmt, [p for p, _ in pairs])
    layout = layout_for(fmt)
    if isinstance(layout, HfLayout):
        return layout.check(pairs, allow_pickle=allow_pickle)
    return None if layout is None else layout.check(pairs)


def check_version(fmt: str | None, files: Files, *, allow_pickle: bool = False) -> Artifact | None:
    """The registry's check of a new or finalised version: no pickled Python objects in any
    version (but a pickled torch module as format `pickle`), and the files make `fmt`."""
    if fmt is None:
        refuse_pickled(None, [p for p, _ in _pairs(files)])
        return None
    return artifact(fmt, files, allow_pickle=allow_pickle)


def refuse_pickled(fmt: str | None, paths: Iterable[str]) -> None:
    """A `.pkl`/`.pickle`/`.joblib` file is a scikit-learn estimator more often than not: it
    is refused with the conversion as the fix (format `pickle` keeps torch.save's .pkl)."""
    for path in paths:
        lower = path.lower()
        if lower.endswith(PICKLED) and (fmt != ModelFormat.pickle or lower.endswith(".joblib")):
            raise PickledObject(path)


@functools.cache
def runtime_entry_points() -> Mapping[str, EntryPoint]:
    """Installed runtimes by format (read from package metadata: nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=RUNTIMES_GROUP)}


def forget_runtimes() -> None:
    """Read the installed runtimes afresh on next use (after installing one at run time)."""
    runtime_entry_points.cache_clear()
    _third_party_layout.cache_clear()


@functools.cache
def _third_party_layout(entry: EntryPoint) -> Layout | None:
    try:
        runtime = entry.load()
    except Exception as exc:  # its framework is not installed here: no check, not no format
        log.warning("runtime %s (%s) cannot be loaded here: %s", entry.name, entry.value, exc)
        return None
    layouts = getattr(runtime, "layouts", None)
    layout = layouts.get(entry.name) if isinstance(layouts, Mapping) else None
    return layout if isinstance(layout, Layout) else None


def _pairs(files: Files) -> list[tuple[str, int]]:
    return [(f.path, int(f.size)) if hasattr(f, "path") else (str(f[0]), int(f[1])) for f in files]


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOWN_FILES])
    return f"[{shown}{', …' if len(paths) > SHOWN_FILES else ''}]"


SHAPELESS_FORMATS = frozenset({"torchscript", "safetensors", "pickle"})


def signature_hint(
    fmt: str | None,
    signature: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    files: Files,
) -> str | None:
    """What a version says in the API when its graph keeps no tensor shapes (TorchScript)
    and it has no signature: how it serves, and how to give it one. None otherwise."""
    if fmt not in SHAPELESS_FORMATS or (signature or {}).get("inputs"):
        return None
    try:
        found = LAYOUTS[fmt].check(files)
    except FormatError:
        return None
    if found.keeps_shapes:
        return None
    add = (
        "push it with a signature (Client.push_module does; or `modelplane push --signature "
        "sig.json`) to have calls checked and shown in full"
    )
    if (metadata or {}).get("example") is not None:
        return (
            f"no signature: {found.graph} keeps no tensor datatypes or shapes; the recorded "
            "example input shows them and its warm-up call the outputs, but calls are not "
            f"checked against them: {add}"
        )
    return (
        f"no signature: {found.graph} keeps no tensor datatypes or shapes, so calls reach the "
        "model unchecked and its outputs show in metadata only after the first call that "
        f"succeeds: {add}, or with an example input (`modelplane push --example x.npy`, "
        "Client.push(..., example=x))"
    )
