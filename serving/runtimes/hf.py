"""Hugging Face-format models with `transformers`: `hf_causal_lm` (generation, through the
continuous-batching engine of `serving.llm.engine`) and `hf_embedding` (an encoder whose
mean-pooled, L2-normalised last hidden state is the embedding).

Both load with `from_pretrained(dir, local_files_only=True)`: safetensors are read through
`safe_open`, memory-mapped, never a pickle; no hub is ever asked. On CUDA the weights run in
bfloat16 (float16 where bf16 is unsupported); on CPU in float32, measured fastest here
(bench/README.md: bf16 matmuls on a CPU without AMX are emulated, ~3x slower per step).
These runtimes answer the OpenAI protocol (`serving.protocols.openai`), not `predict`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from contract.enums import Device
from contract.formats import LAYOUTS, Layout
from serving.artifacts import ArtifactError
from serving.llm.engine import Engine
from serving.metrics import LlmMetrics
from serving.runtimes.base import Inputs, InputsDoNotFit, Outputs, Runtime

WARM_UP_TOKENS = 4


class PromptError(InputsDoNotFit):
    """A prompt the model cannot take (too long, no chat template): a 400 saying why."""


class _HfRuntime(Runtime):
    auto_class: ClassVar[Any] = AutoModel

    def __init__(self, model_format: str, options: Any = None) -> None:
        super().__init__(model_format, options)
        self.checked = False  # no tensors: calls come through the OpenAI protocol
        self.module: Any = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.context_length = 0
        self.device = torch.device("cpu")

    @property
    def platform(self) -> str:
        return "transformers"

    def load(self, path: Path) -> None:
        root = self.locate(path)[0].parent
        self.device = _pick_device(self.options.device)
        if self.device.type == "cpu" and self.options.intra_op_threads <= 1:
            # generation is compute-bound: every core (the default of 1 suits small models)
            torch.set_num_threads(os.cpu_count() or 1)
        elif self.options.intra_op_threads > 1:
            torch.set_num_threads(self.options.intra_op_threads)
        dtype = _dtype_for(self.device)
        try:
            module = self.auto_class.from_pretrained(root, local_files_only=True, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"cannot load {root} with transformers: {exc}") from exc
        self.module = module.to(self.device).eval()
        self.tokenizer = tokenizer
        self.context_length = _context_length(module.config, tokenizer)

    def predict(self, inputs: Inputs) -> Outputs:
        raise InputsDoNotFit(
            f"format {self.format} is served through the OpenAI API (/v1/chat/completions, "
            "/v1/completions, /v1/embeddings), not tensors"
        )

    def unload(self) -> None:
        self.module = None


class HfCausalLmRuntime(_HfRuntime):
    """A causal language model; `engine` generates, many requests batched together."""

    layouts: ClassVar[dict[str, Layout]] = {"hf_causal_lm": LAYOUTS["hf_causal_lm"]}
    auto_class = AutoModelForCausalLM

    def __init__(self, model_format: str, options: Any = None) -> None:
        super().__init__(model_format, options)
        self.llm_metrics = LlmMetrics()
        self.engine: Engine | None = None

    def load(self, path: Path) -> None:
        super().load(path)
        assert self.tokenizer is not None
        self.engine = Engine(
            self.module,
            self.tokenizer,
            context_length=self.context_length,
            eos_token_ids=_eos_ids(self.module, self.tokenizer),
            metrics=self.llm_metrics,
            max_running=self.options.max_batch_size,
            max_waiting=self.options.max_queue,
        )
        self._warm_up()
        self.engine.start()

    def _warm_up(self) -> None:
        with torch.inference_mode():
            ids = torch.zeros(1, WARM_UP_TOKENS, dtype=torch.long, device=self.device)
            self.module.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=2,
                do_sample=False,
                pad_token_id=0,
            )

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        super().unload()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids of `messages` through the tokenizer's chat template."""
        tokenizer = self.tokenizer
        assert tokenizer is not None
        if not tokenizer.chat_template:
            raise PromptError(
                "this model's tokenizer has no chat template: use /v1/completions with a prompt"
            )
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template's own error (jinja): the messages do not fit
            raise PromptError(f"the chat template refused the messages: {exc}") from None
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        assert self.tokenizer is not None
        return list(self.tokenizer(prompt)["input_ids"])


class HfEmbeddingRuntime(_HfRuntime):
    """An encoder: mean of the last hidden state over real tokens, L2-normalised."""

    layouts: ClassVar[dict[str, Layout]] = {"hf_embedding": LAYOUTS["hf_embedding"]}
    auto_class = AutoModel

    def __init__(self, model_format: str, options: Any = None) -> None:
        super().__init__(model_format, options)
        self._lock = threading.Lock()  # calls come from a thread pool; torch runs one at once

    def embed(self, texts: list[str]) -> tuple[np.ndarray[Any, Any], int]:
        """Embeddings of `texts` (one row each) and the tokens they took. Blocking."""
        tokenizer = self.tokenizer
        assert tokenizer is not None
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        lengths = batch["attention_mask"].sum(1)
        if int(lengths.max()) > self.context_length:
            raise PromptError(
                f"this model's maximum context length is {self.context_length} tokens; an input "
                f"has {int(lengths.max())}"
            )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._lock, torch.inference_mode():
            hidden = self.module(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy().astype(np.float32), int(lengths.sum())


def _pick_device(device: Device) -> torch.device:
    if device is not Device.cpu and torch.cuda.is_available():
        return torch.device("cuda")
    if device is Device.cuda:
        raise ArtifactError("device cuda asked for, but torch sees no CUDA device")
    return torch.device("cpu")


def _dtype_for(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _context_length(config: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**9:
        return limit
    raise ArtifactError("config.json names no context length (max_position_embeddings)")


def _eos_ids(module: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    found: set[int] = set()
    for source in (getattr(module, "generation_config", None), module.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, int))
    if not found and tokenizer.eos_token_id is not None:
        found.add(int(tokenizer.eos_token_id))
    return found
