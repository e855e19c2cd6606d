"""A version's declared processing: built-in steps around the model, data and never code.

A version carries its pipeline as `metadata["pipeline"]` or as a `pipeline.json` file; the
registry validates it when the version is created, the serving process when it loads. Steps:

- input `image`: encoded JPEG/PNG/WebP bytes → resize, center-crop → float CHW/HWC tensor,
  scaled and normalised; limits on bytes and pixels (checked on the header, before decoding);
- input `text`: strings → `input_ids` (and `attention_mask`) with a `tokenizer.json`;
- output `softmax`, then `argmax` or `topk`, with labels from `labels.txt` (one a line) or
  TorchServe's `index_to_name.json` in the version.

```json
{"input": [{"type": "image", "resize": 36, "crop": 32, "mean": [0.49, 0.48, 0.45],
            "std": [0.25, 0.24, 0.26]}],
 "output": [{"type": "softmax"}, {"type": "topk", "k": 3}]}
```
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

PIPELINE_FILE = "pipeline.json"
LABEL_FILES = ("labels.txt", "index_to_name.json")  # looked for when `labels` is not given
MAX_PIPELINE_BYTES = 1 << 20
MAX_IMAGE_PIXELS = 1 << 26  # ~67 Mpx: what `max_pixels` may be raised to, never beyond

TensorName = Annotated[str, Field(min_length=1, max_length=256)]
Size = Annotated[int, Field(ge=1, le=16384)]


def _relative_path(path: str) -> str:
    from contract.schemas import check_path  # schemas imports this module to validate metadata

    return check_path(path)


VersionFile = Annotated[str, AfterValidator(_relative_path)]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageStep(_Step):
    """Encoded images (one BYTES element each) → the float tensor a vision model takes."""

    type: Literal["image"]
    input: TensorName | None = Field(
        None, description="model input it feeds (default: the model's only input)"
    )
    name: TensorName | None = Field(
        None, description="request input carrying the encoded images (default: `input`)"
    )
    resize: Size | tuple[Size, Size] | None = Field(
        None, description="N: shorter side to N, aspect kept (torchvision's Resize(N)); [h, w]"
    )
    crop: Size | tuple[Size, Size] | None = Field(
        None, description="center crop after resizing: N (square) or [h, w]"
    )
    mode: Literal["RGB", "L"] = Field("RGB", description="3 channels, or 1 (grayscale)")
    layout: Literal["CHW", "HWC"] = "CHW"
    scale: float = Field(1 / 255, gt=0, description="pixel values are multiplied by this first")
    mean: list[float] | None = Field(None, description="per channel, subtracted after scaling")
    std: list[float] | None = Field(None, description="per channel, divided by after `mean`")
    max_pixels: int = Field(
        25_000_000, ge=1, le=MAX_IMAGE_PIXELS, description="larger images are refused unread"
    )
    max_bytes: int = Field(20 << 20, ge=1, le=1 << 30, description="per encoded image")

    @model_validator(mode="after")
    def _channels(self) -> ImageStep:
        channels = 3 if self.mode == "RGB" else 1
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is not None and len(values) != channels:
                raise ValueError(f"{field} needs {channels} values for mode {self.mode}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std may not contain 0")
        if isinstance(self.resize, int) and self.crop is not None:
            crop = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            if max(crop) > self.resize:
                raise ValueError(f"crop {list(crop)} is larger than the resized shorter side")
        return self

    @property
    def request_name(self) -> str | None:
        return self.name or self.input


class TextStep(_Step):
    """Strings (one BYTES element each) → token ids with a Hugging Face `tokenizer.json`."""

    type: Literal["text"]
    name: TensorName = Field("text", description="request input carrying the strings")
    tokenizer: VersionFile = Field("tokenizer.json", description="file in the version")
    max_length: int = Field(512, ge=1, le=1 << 16, description="longer texts are truncated")
    max_bytes: int = Field(1 << 20, ge=1, le=1 << 30, description="per text, UTF-8 encoded")
    pad_to_max_length: bool = Field(
        False, description="pad every call to max_length (default: to its longest text)"
    )
    input_ids: TensorName = "input_ids"
    attention_mask: TensorName | None = "attention_mask"
    token_type_ids: TensorName | None = None

    @property
    def request_name(self) -> str:
        return self.name


class Softmax(_Step):
    type: Literal["softmax"]


class Argmax(_Step):
    type: Literal["argmax"]


class TopK(_Step):
    type: Literal["topk"]
    k: int = Field(5, ge=1, le=1000)


InputStep = Annotated[ImageStep | TextStep, Field(discriminator="type")]
OutputStep = Annotated[Softmax | Argmax | TopK, Field(discriminator="type")]


class PipelineSpec(BaseModel):
    """Steps before (`input`, one per model input they feed) and after (`output`, in order)."""

    model_config = ConfigDict(extra="forbid")

    input: list[InputStep] = Field(default_factory=list, max_length=16)
    output: list[OutputStep] = Field(default_factory=list, max_length=3)
    output_tensor: TensorName | None = Field(
        None, description="model output the output steps read (default: the only one)"
    )
    labels: VersionFile | None = Field(
        None, description="labels file in the version (default: labels.txt or index_to_name.json)"
    )

    @model_validator(mode="after")
    def _order(self) -> PipelineSpec:
        kinds = [step.type for step in self.output]
        picks = [k for k in kinds if k in ("argmax", "topk")]
        if len(picks) > 1 or (picks and kinds[-1] not in ("argmax", "topk")):
            raise ValueError("output takes at most one argmax or topk, as its last step")
        if kinds.count("softmax") > 1:
            raise ValueError("output takes softmax at most once")
        if self.labels is not None and not picks:
            raise ValueError("labels are read by an argmax or topk output step; there is none")
        named = [s.request_name for s in self.input if s.request_name is not None]
        if len(named) != len(set(named)):
            raise ValueError("two input steps read the same request input")
        unnamed = [s for s in self.input if s.request_name is None]
        if unnamed and len(self.input) > 1:
            raise ValueError("with several input steps, each image step names its model 'input'")
        return self


def parse_pipeline(doc: Any) -> PipelineSpec:
    """The pipeline in `doc` (a parsed `pipeline.json` or `metadata["pipeline"]`); raises
    ValueError with one line per problem."""
    try:
        return PipelineSpec.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ValueError(f"invalid pipeline: {problems}") from None


def parse_pipeline_file(raw: bytes) -> PipelineSpec:
    """A version's `pipeline.json` (its first `MAX_PIPELINE_BYTES` + 1 bytes are enough to
    tell) as a pipeline; raises ValueError saying what is wrong."""
    if len(raw) > MAX_PIPELINE_BYTES:
        raise ValueError(f"over {MAX_PIPELINE_BYTES} bytes")
    return parse_pipeline(json.loads(raw))  # a JSONDecodeError is a ValueError


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
