"""A Python load generator, for clients wrk cannot run (the SDK): ``connections`` threads in
this process, each making one call after the other for ``seconds``, every call timed.

Its own limits come with it: the threads share one interpreter (one GIL), so the calls/s it
can make is bounded by this process's CPU per call, whatever the server could take. Compare
only rows it measured itself (the SDK against plain httpx with the same threads)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.procstat import cpu_seconds


@dataclass
class Load:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: float  # this process's CPU over the run (the load generator's cost)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def drive(call: Callable[[], object], connections: int, seconds: float) -> Load:
    """Runs ``call`` back to back on ``connections`` threads; an exception is an error."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    start = threading.Barrier(connections + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        mine, clock = latencies[i], time.perf_counter
        start.wait()
        while not stop.is_set():
            began = clock()
            try:
                call()
            except Exception:  # counted: a load generator goes on
                errors[i] += 1
                continue
            mine.append(clock() - began)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    cpu0 = cpu_seconds(os.getpid())
    began = time.perf_counter()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(os.getpid()) - cpu0
    every = np.concatenate([np.asarray(x) for x in latencies]) * 1e3
    p50, p99 = np.percentile(every, [50, 99]) if every.size else (float("nan"),) * 2
    return Load(int(every.size), sum(errors), elapsed, float(p50), float(p99), cpu)
