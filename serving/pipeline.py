"""A version's declared pipeline, run around the model: decode and normalise images, tokenise
text; softmax, argmax or top-k with labels. The steps are data (`contract.pipeline`), never code.

Input steps turn a call's BYTES inputs into the tensors the model takes. They run before the
checks against the model's inputs and before batching, so decoded images stack like any
tensor; a call that sends the model's tensor itself skips its step. Output steps run on the
model's answer. Pillow and tokenizers are imported only by a process whose pipeline has such
a step (`pip install 'modelplane[pipeline]'`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contract.dtypes import NUMERIC_DTYPES
from contract.pipeline import (
    LABEL_FILES,
    MAX_PIPELINE_BYTES,
    PIPELINE_FILE,
    Argmax,
    ImageStep,
    OutputStep,
    PipelineSpec,
    Softmax,
    TextStep,
    TopK,
    parse_pipeline,
)
from serving.artifacts import ArtifactError
from serving.protocols.v2 import OutputTensor, ProtocolError, RequestInput, TensorSpec, check_input

# Encoded inputs up to this many bytes are decoded on the event loop: a small image costs
# less there than the hop to a thread (bench/pipeline.py); bigger ones go to a thread.
INLINE_BYTES = 64 << 10
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
FLOAT_TYPES = ("FP32", "FP16", "FP64")
INTEGER_TYPES = ("INT64", "INT32")


def load_pipeline(path: Path, metadata: dict[str, Any] | None = None) -> Pipeline | None:
    """The pipeline of the version at `path`: its `pipeline.json`, else `metadata["pipeline"]`,
    else None. Raises `ArtifactError` when it cannot be used."""
    directory = path if path.is_dir() else path.parent
    file = directory / PIPELINE_FILE
    if path.is_dir() and file.is_file():
        if file.stat().st_size > MAX_PIPELINE_BYTES:
            raise ArtifactError(f"{file} is over {MAX_PIPELINE_BYTES} bytes")
        try:
            doc = orjson.loads(file.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ArtifactError(f"{file} is not valid JSON: {exc}") from None
        where = str(file)
    elif metadata and metadata.get("pipeline") is not None:
        doc, where = metadata["pipeline"], "the version's metadata"
    else:
        return None
    try:
        spec = parse_pipeline(doc)
    except ValueError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    return Pipeline(spec, directory)


class Pipeline:
    """A pipeline bound to one model. After `bind`, `inputs` and `outputs` are what calls
    send and get back (an image step's input is BYTES; argmax gives label, index, score)."""

    def __init__(self, spec: PipelineSpec, directory: Path) -> None:
        self.spec = spec
        self._steps: list[ImageDecoder | TextEncoder] = [
            ImageDecoder(s) if isinstance(s, ImageStep) else TextEncoder(s, directory)
            for s in spec.input
        ]
        picks = any(isinstance(s, Argmax | TopK) for s in spec.output)
        labels = read_labels(directory, spec.labels) if picks else None
        self._post = OutputSteps(spec.output, spec.output_tensor, labels) if spec.output else None
        self._takes: dict[str, ImageDecoder | TextEncoder] = {}
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    def bind(
        self, inputs: list[TensorSpec], outputs: list[TensorSpec], *, checked: bool = True
    ) -> None:
        """Resolve names against the model's specs and, when they are known (`checked`:
        not guessed), run one example through each input step; raises `ArtifactError` when
        the pipeline does not fit the model."""
        model = {s.name: s for s in inputs}
        fed: dict[str, ImageDecoder | TextEncoder] = {}
        for step in self._steps:
            for name in step.bind(model, checked):
                if name in fed:
                    raise ArtifactError(f"two pipeline steps feed model input {name!r}")
                fed[name] = step
            if checked:
                step.check(model)
        self._takes = {step.name: step for step in self._steps}
        self.inputs = []
        for spec in inputs:
            feeder = fed.get(spec.name)
            if feeder is None:
                self.inputs.append(spec)
            elif feeder.name not in {s.name for s in self.inputs}:
                self.inputs.append(TensorSpec(feeder.name, "BYTES", [-1]))
        for step in self._steps:  # the model's inputs are unknown (unchecked): still listed
            if step.name not in {s.name for s in self.inputs}:
                self.inputs.append(TensorSpec(step.name, "BYTES", [-1]))
        self.outputs = self._post.bind(outputs) if self._post is not None else list(outputs)

    @property
    def has_output_steps(self) -> bool:
        return self._post is not None

    def heavy(self, items: list[RequestInput]) -> bool:
        """Whether this call's input steps had better run off the event loop."""
        total = 0
        for item in items:
            if item.name in self._takes and item.datatype == "BYTES":
                total += sum(len(b) for b in item.data.ravel())
        return total > INLINE_BYTES

    def prepare(self, items: list[RequestInput]) -> list[RequestInput]:
        """A call's inputs as the model takes them; `ProtocolError` (400) for bad data."""
        out: list[RequestInput] = []
        for item in items:
            step = self._takes.get(item.name)
            if step is None:
                out.append(item)
            elif item.datatype == "BYTES":
                out.extend(step.run(item.name, item.data))
            elif step.passes(item.name):
                out.append(item)  # the model's own tensor, already prepared by the caller
            else:
                raise ProtocolError(
                    f"input {item.name!r} takes {step.what} as BYTES, got {item.datatype}"
                )
        return out

    def finish(self, outputs: dict[str, OutputTensor]) -> dict[str, OutputTensor]:
        return outputs if self._post is None else self._post.finish(outputs)

    def records(self, outputs: dict[str, OutputTensor]) -> list[Any] | None:
        """Per row, what JSON protocols answer for an argmax/top-k pipeline (else None):
        `{"label", "index", "score"}`, or a list of them for top-k."""
        return None if self._post is None else self._post.records(outputs)


# -- input: images ------------------------------------------------------------------------


class ImageDecoder:
    """One image step: JPEG/PNG/WebP bytes → [N, C, H, W] (or [N, H, W, C]) floats."""

    what = "encoded images"

    def __init__(self, step: ImageStep) -> None:
        try:
            from PIL import Image
        except ImportError:
            raise ArtifactError(
                "the pipeline's image step needs Pillow: pip install 'modelplane[pipeline]'"
            ) from None
        # Our own pixel limit (`max_pixels`, at most 2**26) is checked on the header right
        # after `open`, before a byte is decoded: Pillow's global one would only answer
        # first, in its own words, for the largest images.
        Image.MAX_IMAGE_PIXELS = None
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        self.step = step
        self.name = step.request_name or ""
        self.feeds = step.input or ""
        self.datatype = "FP32"
        self._channels = 3 if step.mode == "RGB" else 1
        mean = np.asarray(step.mean or [0.0] * self._channels, np.float32)
        std = np.asarray(step.std or [1.0] * self._channels, np.float32)
        self._mul = (np.float32(step.scale) / std).astype(np.float32)
        self._add = (-mean / std).astype(np.float32)
        self._crop = (step.crop, step.crop) if isinstance(step.crop, int) else step.crop

    def bind(self, model: dict[str, TensorSpec], checked: bool) -> list[str]:
        """The model input this step feeds; its spec is trusted only when `checked`."""
        if not self.feeds:
            if len(model) != 1:
                raise ArtifactError(
                    f"the image step needs 'input': the model's inputs are {sorted(model)}"
                )
            self.feeds = next(iter(model))
        self.name = self.name or self.feeds
        spec = model.get(self.feeds)
        if model and spec is None:
            raise ArtifactError(
                f"the image step feeds input {self.feeds!r}; the model's inputs are {sorted(model)}"
            )
        if spec is not None and checked:
            if spec.datatype not in FLOAT_TYPES:
                raise ArtifactError(
                    f"the image step makes floats; model input {self.feeds!r} is {spec.datatype}"
                )
            self.datatype = spec.datatype
        return [self.feeds]

    def check(self, model: dict[str, TensorSpec]) -> None:
        """Decode one generated PNG and check the tensor against the model's input."""
        spec = model.get(self.feeds)
        if spec is None:
            return
        height, width = 48, 64
        if len(spec.shape) == 4 and self.step.resize is None and self._crop is None:
            dims = spec.shape[2:] if self.step.layout == "CHW" else spec.shape[1:3]
            height, width = (d if d > 0 else s for d, s in zip(dims, (height, width), strict=True))
        [made] = self.run(self.name, _objects([example_png(width, height)]))
        try:
            check_input(spec, made.datatype, made.shape)
        except ProtocolError:
            raise ArtifactError(
                f"the image step makes {list(made.shape)} ({self.step.layout}, {self.step.mode}) "
                f"for input {self.feeds!r}; the model expects {spec.shape}: check the "
                "pipeline's resize, crop, mode and layout"
            ) from None

    def passes(self, name: str) -> bool:
        return name == self.feeds

    def run(self, name: str, data: np.ndarray[Any, Any]) -> list[RequestInput]:
        if data.ndim != 1 or not data.size:
            raise ProtocolError(
                f"input {name!r}: one encoded image per element, shape [N]; got {list(data.shape)}"
            )
        images = [
            self.decode(name, i if data.size > 1 else None, blob) for i, blob in enumerate(data)
        ]
        if len({a.shape for a in images}) > 1:
            sizes = sorted({f"{a.shape[-2]}x{a.shape[-1]}" for a in images})
            raise ProtocolError(
                f"input {name!r}: images decode to different sizes {sizes}; "
                "the pipeline needs resize and crop to batch them"
            )
        batch = images[0][None] if len(images) == 1 else np.stack(images)
        if self.datatype != "FP32":
            batch = batch.astype(NUMERIC_DTYPES[self.datatype])
        return [RequestInput(self.feeds, self.datatype, batch.shape, batch)]

    def decode(self, name: str, index: int | None, blob: bytes) -> np.ndarray[Any, Any]:
        """One image as [C, H, W] (or [H, W, C]) float32; `ProtocolError` says why not."""
        from PIL import Image, UnidentifiedImageError

        where = f"input {name!r}" if index is None else f"input {name!r} element {index}"
        step = self.step
        if len(blob) > step.max_bytes:
            raise ProtocolError(
                f"{where}: image of {len(blob)} bytes is over the limit of {step.max_bytes}"
            )
        try:
            image = Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise ProtocolError(f"{where}: not an image (JPEG, PNG or WebP expected)") from None
        except Image.DecompressionBombError as exc:
            raise ProtocolError(f"{where}: refused as a decompression bomb: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ProtocolError(f"{where}: cannot read the image: {exc}") from None
        width, height = image.size
        if width * height > step.max_pixels:
            raise ProtocolError(
                f"{where}: image of {width}x{height} pixels is over the limit of "
                f"{step.max_pixels} pixels (decompression bomb protection)"
            )
        try:
            pixels = self._pixels(image)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ProtocolError(f"{where}: cannot decode the image: {exc}") from None
        values = pixels * self._mul + self._add  # uint8 * float32: float32
        return np.ascontiguousarray(values.transpose(2, 0, 1)) if step.layout == "CHW" else values

    def _pixels(self, image: Any) -> np.ndarray[Any, Any]:
        from PIL import Image, ImageOps

        step = self.step
        if image.format == "JPEG":
            if step.resize is not None:  # decode big JPEGs at a reduced scale (DCT scaling)
                image.draft(step.mode, _draft_size(image.size, step.resize))
            if image.getexif().get(0x0112, 1) != 1:  # a camera's orientation tag
                image = ImageOps.exif_transpose(image)
        image.load()
        if image.mode != step.mode:
            image = image.convert(step.mode)
        if step.resize is not None:
            size = _resized(image.size, step.resize)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self._crop is not None:
            image = _center_crop(image, self._crop)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels if pixels.ndim == 3 else pixels[:, :, None]


def _resized(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    """torchvision's Resize: an int sets the shorter side (the longer one truncated)."""
    width, height = size
    if not isinstance(resize, int):
        return resize[1], resize[0]
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def _draft_size(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    # Twice the target: DCT scaling only kicks in for images 4x larger, and the
    # bilinear resize after it still does the antialiasing.
    width, height = _resized(size, resize)
    return 2 * width, 2 * height


def _center_crop(image: Any, crop: tuple[int, int]) -> Any:
    """torchvision's CenterCrop (an image smaller than the crop is padded with black)."""
    height, width = crop
    if image.size == (width, height):
        return image
    top = int(round((image.size[1] - height) / 2.0))
    left = int(round((image.size[0] - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def example_png(width: int, height: int) -> bytes:
    from PIL import Image

    gradient = np.linspace(0, 255, width * height * 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gradient.reshape(height, width, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _objects(items: list[bytes]) -> np.ndarray[Any, Any]:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# -- input: text ---------------------------------------------------------------------------


class TextEncoder:
    """One text step: UTF-8 strings → input_ids (+ attention_mask, token_type_ids)."""

    what = "strings"

    def __init__(self, step: TextStep, directory: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ArtifactError(
                "the pipeline's text step needs tokenizers: pip install 'modelplane[pipeline]'"
            ) from None
        path = directory / step.tokenizer
        if not path.is_file():
            raise ArtifactError(
                f"the text step's tokenizer {step.tokenizer!r} is not in the version"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise ArtifactError(f"cannot load {step.tokenizer}: {exc}") from None
        tokenizer.enable_truncation(step.max_length)
        padding = tokenizer.padding or {}
        tokenizer.enable_padding(
            direction=padding.get("direction", "right"),
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
            length=step.max_length if step.pad_to_max_length else None,
        )
        self.step = step
        self.name = step.name
        self._tokenizer = tokenizer
        self._targets = {
            "ids": step.input_ids,
            "attention_mask": step.attention_mask,
            "type_ids": step.token_type_ids,
        }
        self._types = {name: "INT64" for name in self._targets.values() if name}

    def bind(self, model: dict[str, TensorSpec], checked: bool) -> list[str]:
        names = [n for n in self._targets.values() if n]
        for name in names:
            spec = model.get(name)
            if model and spec is None:
                raise ArtifactError(
                    f"the text step feeds input {name!r}; the model's inputs are {sorted(model)}"
                )
            if spec is not None and checked:
                if spec.datatype not in INTEGER_TYPES or len(spec.shape) != 2:
                    raise ArtifactError(
                        f"the text step makes [N, tokens] INT64; model input {name!r} is "
                        f"{spec.datatype} {spec.shape}"
                    )
                self._types[name] = spec.datatype
        return names

    def check(self, model: dict[str, TensorSpec]) -> None:
        for made in self.run(self.name, _objects([b"warm-up"])):
            spec = model.get(made.name)
            if spec is not None:
                try:
                    check_input(spec, made.datatype, made.shape)
                except ProtocolError as exc:
                    raise ArtifactError(f"the text step does not fit the model: {exc}") from None

    def passes(self, name: str) -> bool:
        return False

    def run(self, name: str, data: np.ndarray[Any, Any]) -> list[RequestInput]:
        if data.ndim != 1 or not data.size:
            raise ProtocolError(
                f"input {name!r}: one text per element, shape [N]; got {list(data.shape)}"
            )
        texts = []
        for i, raw in enumerate(data):
            if len(raw) > self.step.max_bytes:
                raise ProtocolError(
                    f"input {name!r} element {i}: {len(raw)} bytes, over {self.step.max_bytes}"
                )
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(f"input {name!r} element {i} is not UTF-8 text") from None
        encodings = self._tokenizer.encode_batch(texts)
        made = []
        for attribute, target in self._targets.items():
            if target:
                dtype = NUMERIC_DTYPES[self._types[target]]
                array = np.array([getattr(e, attribute) for e in encodings], dtype=dtype)
                made.append(RequestInput(target, self._types[target], array.shape, array))
        return made


# -- output --------------------------------------------------------------------------------


class OutputSteps:
    """softmax, then argmax or top-k, on one model output (the last axis holds the classes)."""

    def __init__(self, steps: list[OutputStep], tensor: str | None, labels: list[str] | None):
        self._softmax = any(isinstance(s, Softmax) for s in steps)
        pick = steps[-1] if isinstance(steps[-1], Argmax | TopK) else None
        self._k = pick.k if isinstance(pick, TopK) else None
        self._pick = pick is not None
        self._tensor = tensor
        self._labels = labels

    def bind(self, outputs: list[TensorSpec]) -> list[TensorSpec]:
        if not outputs:
            return []  # not known before the first call
        names = [s.name for s in outputs]
        if self._tensor is None and len(outputs) > 1:
            raise ArtifactError(f"the output steps need 'output_tensor': model outputs are {names}")
        if self._tensor is not None and self._tensor not in names:
            raise ArtifactError(f"output_tensor {self._tensor!r} is not a model output {names}")
        spec = outputs[names.index(self._tensor)] if self._tensor else outputs[0]
        classes = spec.shape[-1] if spec.shape else 0
        if self._labels is not None and classes > 0 and len(self._labels) != classes:
            raise ArtifactError(
                f"{len(self._labels)} labels for output {spec.name!r} of {classes} classes"
            )
        others = [s for s in outputs if s.name != spec.name]
        if not self._pick:
            return [*others, TensorSpec(spec.name, "FP32", spec.shape)]
        rows = spec.shape[:-1] + ([min(self._k, classes) if classes > 0 else -1] if self._k else [])
        made = [TensorSpec("label", "BYTES", rows)] if self._labels is not None else []
        return [
            *others,
            *made,
            TensorSpec("index", "INT64", rows),
            TensorSpec("score", "FP32", rows),
        ]

    def finish(self, outputs: dict[str, OutputTensor]) -> dict[str, OutputTensor]:
        name = self._tensor or next(iter(outputs))
        tensor = outputs.get(name)
        if tensor is None or tensor.datatype == "BYTES" or not tensor.data.ndim:
            raise RuntimeError(f"the output steps need a numeric output {name!r} with classes")
        values = _floats(tensor)
        if self._softmax:
            shifted = np.exp(values - values.max(axis=-1, keepdims=True))
            values = shifted / shifted.sum(axis=-1, keepdims=True)
        result = {n: t for n, t in outputs.items() if n != name}
        if not self._pick:
            result[name] = OutputTensor("FP32", values)
            return result
        if self._k is None:
            index = values.argmax(axis=-1)[..., None]
        else:
            index = np.argsort(-values, axis=-1, kind="stable")[..., : self._k]
        score = np.take_along_axis(values, index, axis=-1)
        if self._k is None:
            index, score = index[..., 0], score[..., 0]
        if self._labels is not None:
            result["label"] = OutputTensor("BYTES", self._label_array(index))
        result["index"] = OutputTensor("INT64", index.astype(np.int64))
        result["score"] = OutputTensor("FP32", score.astype(np.float32))
        return result

    def _label(self, index: int) -> str:
        labels = self._labels or []
        return labels[index] if index < len(labels) else str(index)

    def _label_array(self, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        flat = _objects([self._label(int(i)).encode() for i in index.ravel()])
        return flat.reshape(index.shape)

    def records(self, outputs: dict[str, OutputTensor]) -> list[Any] | None:
        if not self._pick:
            return None
        index, score = outputs["index"].data, outputs["score"].data
        if index.ndim != (1 if self._k is None else 2):
            return None  # no single batch axis: the tensors say it better
        rows: list[Any] = []
        # numpy float32 scalars: orjson writes them as short as float32 needs
        for indices, scores in zip(index.tolist(), list(score), strict=True):
            if self._k is None:
                rows.append(self._record(indices, scores))
            else:
                rows.append([self._record(i, s) for i, s in zip(indices, scores, strict=True)])
        return rows

    def _record(self, index: int, score: np.float32) -> dict[str, Any]:
        if self._labels is None:
            return {"index": index, "score": score}
        return {"label": self._label(index), "index": index, "score": score}


def _floats(tensor: OutputTensor) -> np.ndarray[Any, Any]:
    if tensor.datatype == "BF16":  # bit pattern: bf16 is the top half of an fp32
        return (tensor.data.astype(np.uint32) << 16).view(np.float32)
    return tensor.data.astype(np.float32, copy=False)


def read_labels(directory: Path, declared: str | None) -> list[str] | None:
    """Class names from `labels.txt` (one a line) or TorchServe's `index_to_name.json`
    (`{"0": "cat"}` or `{"0": ["n02123045", "tabby"]}`); None when the version has neither."""
    names = [declared] if declared else [n for n in LABEL_FILES if (directory / n).is_file()]
    if not names:
        return None
    path = directory / names[0]
    if not path.is_file():
        raise ArtifactError(f"labels file {names[0]!r} is not in the version")
    try:
        if path.suffix != ".json":
            lines = [line.strip() for line in path.read_text("utf-8").splitlines()]
            while lines and not lines[-1]:
                lines.pop()
            return lines
        doc = orjson.loads(path.read_bytes())
        mapping = {int(k): v[-1] if isinstance(v, list) else v for k, v in doc.items()}
    except (OSError, UnicodeDecodeError, orjson.JSONDecodeError, AttributeError, ValueError) as exc:
        raise ArtifactError(f"cannot read labels from {path.name}: {exc}") from None
    if not mapping or min(mapping) < 0 or not all(isinstance(v, str) for v in mapping.values()):
        raise ArtifactError(f"{path.name} must map indices from 0 to names")
    return [mapping.get(i, str(i)) for i in range(max(mapping) + 1)]
