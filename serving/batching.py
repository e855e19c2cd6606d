"""Dynamic batching, with the model run either on the event loop or on one inference thread.

Calls are queued by the event loop and answered through futures. Compatible calls (same
input names, dtypes and trailing shapes) are stacked along dimension 0, run once and
split back. No call waits for company when none is coming: a batch is whatever has
arrived by the time the model is free; `max_delay_ms` only lets a batch that is already
forming (other calls in flight) wait for more, and `wait_lone` extends that to lone calls.

Where the model runs (`start(loop, inline=...)`):
- inline, on the event loop, once per loop iteration over every call parsed in it: no
  thread hop at all. On a small CPU box this wins clearly for fast models (bench/README.md),
  because each hop to a thread costs a scheduler wake-up while the cores are busy.
- on a dedicated inference thread: the event loop keeps accepting and parsing while a slow
  model (a big CNN, a GPU) computes, and health probes never wait behind a model call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.metrics import ServingMetrics
from serving.protocol import OutputTensor
from serving.runtimes.base import Runtime, call_failure

Inputs = dict[str, np.ndarray[Any, Any]]
Outputs = dict[str, OutputTensor]
BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


class QueueFull(Exception):
    """More calls are queued than allowed; answered 503 with Retry-After."""


@dataclass(slots=True)
class Call:
    inputs: Inputs
    rows: int
    key: BatchKey | None  # None: cannot be stacked with other calls
    future: asyncio.Future[Outputs]
    outcome: Outputs | BaseException | None = field(default=None)


class Batcher:
    def __init__(
        self,
        runtime: Runtime,
        metrics: ServingMetrics,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        wait_lone: bool = False,
    ) -> None:
        self._runtime = runtime
        self._metrics = metrics
        self._max_batch = max_batch_size
        self._delay = max_delay_ms / 1000
        self._max_queue = max_queue
        self._wait_lone = wait_lone
        self._inline = False
        self._arrived: list[Call] = []  # inline mode: calls waiting for the next flush
        self._arrived_rows = 0
        self._flush_at: asyncio.Handle | None = None
        self._last_flush_calls = 0
        self._queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._pending = 0  # touched only on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        metrics.track_queue_depth(lambda: self._pending)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def inline(self) -> bool:
        return self._inline

    def start(self, loop: asyncio.AbstractEventLoop, *, inline: bool = False) -> None:
        self._loop, self._inline = loop, inline
        if self._runtime.max_batch is not None:  # known after load: never stack beyond it
            self._max_batch = min(self._max_batch, self._runtime.max_batch)
        if not inline:
            self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, inputs: Inputs) -> asyncio.Future[Outputs]:
        """Queue one call (on the event loop); raises `QueueFull` beyond `max_queue`."""
        if self._pending >= self._max_queue:
            raise QueueFull(f"{self._pending} calls already queued")
        assert self._loop is not None, "Batcher.start() first"
        call = Call(inputs, *self._shape_key(inputs), self._loop.create_future())
        self._pending += 1
        if self._inline:
            self._arrive(call)
        else:
            self._queue.put(call)
        return call.future

    def _arrive(self, call: Call) -> None:
        assert self._loop is not None
        self._arrived.append(call)
        self._arrived_rows += call.rows
        if self._flush_at is None:
            # The event loop is the device, always idle between flushes; a batch "is forming"
            # when the last flush already held several calls (a lone client's never do).
            waits = self._delay and (self._wait_lone or self._last_flush_calls > 1)
            self._flush_at = (
                self._loop.call_later(self._delay, self._flush)
                if waits
                else self._loop.call_soon(self._flush)
            )
        elif self._arrived_rows >= self._max_batch:
            self._flush_at.cancel()
            self._flush_at = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Inline mode: run every call that arrived since the last flush, on the loop."""
        calls, self._arrived, self._flush_at = self._arrived, [], None
        self._arrived_rows, self._last_flush_calls = 0, len(calls)
        batch: list[Call] = []
        rows = 0
        for call in calls:
            if batch and rows + call.rows > self._max_batch:
                self._run(batch)
                self._deliver(batch)
                batch, rows = [], 0
            batch.append(call)
            rows += call.rows
        self._run(batch)
        self._deliver(batch)

    def _shape_key(self, inputs: Inputs) -> tuple[int, BatchKey | None]:
        key = []
        rows = -1
        for name, array in inputs.items():
            shape = array.shape
            if not shape or array.dtype.hasobject or (rows != -1 and shape[0] != rows):
                return max(rows, 1), None
            rows = shape[0]
            key.append((name, array.dtype.str, shape[1:]))
        if rows == -1 or self._max_batch == 1 or not self._runtime.batchable:
            return max(rows, 1), None
        return rows, tuple(key)

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stopping = self._gather(first)
            self._run(batch)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, batch)
            if stopping:
                return

    def _gather(self, first: Call) -> tuple[list[Call], bool]:
        batch, rows = [first], first.rows
        if first.key is None:
            return batch, False
        deadline = None
        while rows < self._max_batch:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                wait = len(batch) > 1 or self._wait_lone
                if not self._delay or not wait:
                    break
                deadline = deadline or time.perf_counter() + self._delay
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    call = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if call is None:
                return batch, True
            batch.append(call)
            rows += call.rows
        return batch, False

    def _run(self, batch: list[Call]) -> None:
        groups: dict[BatchKey | None, list[Call]] = {}
        for call in batch:
            if call.key is None:
                self._run_alone(call)
            else:
                groups.setdefault(call.key, []).append(call)
        for calls in groups.values():
            if len(calls) == 1:
                self._run_alone(calls[0])
            else:
                self._run_stacked(calls)

    def _run_alone(self, call: Call) -> None:
        self._metrics.batch_size.observe(1)
        try:
            call.outcome = self._runtime.predict(call.inputs)
        except Exception as exc:  # answered to this call only: one line, 400 or 500
            call.outcome = call_failure(exc)

    def _run_stacked(self, calls: list[Call]) -> None:
        names = list(calls[0].inputs)
        stacked = {n: np.concatenate([c.inputs[n] for c in calls]) for n in names}
        total = sum(c.rows for c in calls)
        try:
            outputs = self._runtime.predict(stacked)
        except Exception:  # one bad call must not fail its neighbours: retry one by one
            outputs = None
        if outputs is None or any(t.data.shape[:1] != (total,) for t in outputs.values()):
            for call in calls:
                self._run_alone(call)
            return
        self._metrics.batch_size.observe(len(calls))
        start = 0
        for call in calls:
            end = start + call.rows
            call.outcome = {
                n: OutputTensor(t.datatype, t.data[start:end]) for n, t in outputs.items()
            }
            start = end

    def _deliver(self, batch: list[Call]) -> None:
        for call in batch:
            self._pending -= 1
            if call.future.done():  # the caller went away
                continue
            if isinstance(call.outcome, BaseException):
                call.future.set_exception(call.outcome)
            else:
                assert call.outcome is not None
                call.future.set_result(call.outcome)
