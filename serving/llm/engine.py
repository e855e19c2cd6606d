"""Continuous batching over one causal language model: one engine thread runs steps.

Each step first admits waiting requests (one prefill each, alone: no padding, so a prompt's
first token is exactly what `model.generate` makes), merges their KV caches into the running
batch (left-padded to a common length, with an attention mask), then runs one batched decode
step for every running sequence. A sequence leaves the batch the step it finishes (EOS, a
stop string, `max_tokens`) or is cancelled (client gone); its rows leave the cache at once and
columns that became all padding are trimmed. Tokens, text deltas and the finish reason reach
each request's asyncio queue through `loop.call_soon_threadsafe`.

torch and transformers are imported by the caller (serving.runtimes.hf); this module only
uses torch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.metrics import LlmMetrics

log = logging.getLogger("serving.llm")


class QueueFull(Exception):
    """More requests wait than the engine takes: answer 429 with Retry-After."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's extension: exactly max_tokens (benchmarks)


@dataclass(slots=True)
class Chunk:
    """What one step gave a request: the text it may show now, the token ids, and the
    finish reason on its last chunk (`stop`, `length`, or `cancelled`)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop (client gone); read by the engine
    submitted: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    last_token_at: float = 0.0
    sent_chars: int = 0
    generator: torch.Generator | None = None
    finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """The scheduler: `submit` from the event loop, steps on its own thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        context_length: int,
        eos_token_ids: set[int],
        metrics: LlmMetrics,
        max_running: int = 16,
        max_waiting: int = 64,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.context_length = context_length
        self.eos = eos_token_ids
        self.metrics = metrics
        self.max_running, self.max_waiting = max_running, max_waiting
        self.device = next(model.parameters()).device
        # transformers 5.x renamed past_key_values to cache (the old name warns); 4.x has the old
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cache: Any = None  # DynamicCache of the running batch, rows as in _running
        self._mask: torch.Tensor | None = None  # [batch, cache length]: 0 where padding
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        metrics.track(lambda: len(self._running), lambda: len(self._waiting), self.cache_use)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(10)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Queue a request (call on the event loop); `QueueFull` when too many wait."""
        seq = Sequence(prompt_ids, params, asyncio.get_running_loop())
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests already wait")
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def cache_use(self) -> tuple[int, int]:
        """(token slots the KV cache holds, padding included; the most it may hold)."""
        mask = self._mask
        used = 0 if mask is None else int(mask.shape[0] * mask.shape[1])
        return used, self.max_running * self.context_length

    # the engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopped and not self._waiting and not self._running:
                        self._wake.wait()
                    if self._stopped:
                        return
                try:
                    self._step()
                except Exception as exc:  # fail what runs now; the engine carries on
                    log.exception("generation step failed")
                    self._fail_all(f"generation failed: {exc}")

    def _step(self) -> None:
        self._drop_cancelled()
        while len(self._running) < self.max_running:
            with self._wake:
                if not self._waiting:
                    break
                seq = self._waiting.popleft()
            if seq.cancelled:
                self._finish(seq, "cancelled")
                continue
            self._prefill(seq)
        if self._running:
            self._decode()

    def _prefill(self, seq: Sequence) -> None:
        params = seq.params
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else random.getrandbits(63)
            seq.generator = torch.Generator(self.device).manual_seed(seed)
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.metrics.tokens_in += len(seq.prompt_ids)
        token = self._sample(out.logits[0, -1], seq)
        now = time.perf_counter()
        self.metrics.ttft.observe(now - seq.submitted)
        seq.last_token_at = now
        if self._emit(seq, token):
            return
        self._join(seq, self._cache_of(out), len(seq.prompt_ids))

    def _join(self, seq: Sequence, cache: Any, length: int) -> None:
        """Merge a prefilled sequence's cache into the batch, left-padding the shorter."""
        mask = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self._cache is None or self._mask is None:
            self._cache, self._mask, self._running = cache, mask, [seq]
            return
        total = max(length, self._mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, total), _pad(theirs.keys, total)])
            mine.values = torch.cat([_pad(mine.values, total), _pad(theirs.values, total)])
        self._mask = torch.cat([_pad_mask(self._mask, total), _pad_mask(mask, total)])
        self._running.append(seq)

    def _decode(self) -> None:
        running, mask = self._running, self._mask
        assert mask is not None
        ids = torch.tensor([[s.generated[-1]] for s in running], device=self.device)
        positions = torch.tensor(
            [[len(s.prompt_ids) + len(s.generated) - 1] for s in running], device=self.device
        )
        mask = torch.cat([mask, mask.new_ones(len(running), 1)], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: self._cache},
        )
        self._cache, self._mask = self._cache_of(out), mask
        logits = out.logits[:, -1]
        greedy = logits.argmax(dim=-1).tolist()
        now = time.perf_counter()
        done = []
        for row, seq in enumerate(running):
            token = greedy[row] if seq.params.temperature <= 0 else self._sample(logits[row], seq)
            self.metrics.itl.observe(now - seq.last_token_at)
            seq.last_token_at = now
            if self._emit(seq, token):
                done.append(row)
        if done:
            self._remove(set(done))

    def _cache_of(self, out: Any) -> Any:
        cache = getattr(out, "cache", None) if self._cache_arg == "cache" else None
        return cache if cache is not None else out.past_key_values

    def _sample(self, logits: torch.Tensor, seq: Sequence) -> int:
        params = seq.params
        if params.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs, 1, generator=seq.generator)
            return int(order[choice])
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _emit(self, seq: Sequence, token: int) -> bool:
        """Record one token, send what text is final; True when the sequence is done."""
        seq.generated.append(token)
        self.metrics.tokens_out += 1
        params = seq.params
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        room = self.context_length - len(seq.prompt_ids)
        finish = None
        if token in self.eos and not params.ignore_eos:
            finish = "stop"
        elif params.stop and (cut := _find_stop(text, params.stop, seq.sent_chars)) is not None:
            text, finish = text[:cut], "stop"
        elif len(seq.generated) >= min(params.max_tokens, room):
            finish = "length"
        if finish is None:
            # hold back what may still become a stop string or a multi-byte character
            hold = max((len(s) for s in params.stop), default=1) - 1
            end = len(text) - hold
            if text.endswith("\ufffd"):
                end = min(end, len(text) - 1)
        else:
            end = len(text)
        delta = text[seq.sent_chars : end] if end > seq.sent_chars else ""
        seq.sent_chars = max(seq.sent_chars, end)
        seq.finish_reason = finish
        if finish is not None:
            self._count(finish)
        _deliver(seq, Chunk(delta, [token], finish))
        return finish is not None

    def _drop_cancelled(self) -> None:
        gone = {row for row, seq in enumerate(self._running) if seq.cancelled}
        if gone:
            for row in gone:
                self._finish(self._running[row], "cancelled")
            self._remove(gone)

    def _remove(self, rows: set[int]) -> None:
        keep = [row for row in range(len(self._running)) if row not in rows]
        self._running = [self._running[row] for row in keep]
        if not keep:
            self._cache = self._mask = None
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])  # leading columns all padding now
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self._mask = mask[:, start:]

    def _count(self, reason: str) -> None:
        finished = self.metrics.finished
        finished[reason] = finished.get(reason, 0) + 1

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._count(reason.partition(":")[0])
        seq.finish_reason = reason
        _deliver(seq, Chunk("", [], reason))

    def _fail_all(self, message: str) -> None:
        for seq in self._running:
            self._finish(seq, "error: " + message)
        self._running, self._cache, self._mask = [], None, None


def _deliver(seq: Sequence, chunk: Chunk) -> None:
    try:
        seq.loop.call_soon_threadsafe(seq.queue.put_nowait, chunk)
    except RuntimeError:  # its event loop has closed (the process is stopping): nobody listens
        seq.cancelled = True


def _pad(states: torch.Tensor, total: int) -> torch.Tensor:
    missing = total - states.shape[2]
    if missing == 0:
        return states
    shape = (states.shape[0], states.shape[1], missing, states.shape[3])
    return torch.cat([states.new_zeros(shape), states], dim=2)


def _pad_mask(mask: torch.Tensor, total: int) -> torch.Tensor:
    missing = total - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)


def _find_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the first stop string starts in `text` (searching from what may be new)."""
    longest = max(len(s) for s in stops)
    start = max(0, sent - longest)
    found = [i for s in stops if (i := text.find(s, start)) != -1]
    return min(found) if found else None
