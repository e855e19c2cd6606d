"""Knowing that the process was asked to stop before the server gets round to saying so.

uvicorn runs an app's lifespan shutdown only after every request has ended, so what must
end for the shutdown to go on (the route feed's long polls, up to ``MAX_WAIT_S``) cannot
wait for it. uvicorn catches SIGINT and SIGTERM with ``signal.signal`` in the main thread;
``on_exit_signal`` puts a callback in front of whatever handles them, for as long as the
app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_exit_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Within: SIGINT or SIGTERM calls ``callback`` on the running loop, then the handler
    that was there (the default one: as if we were not). Outside the main thread (where
    signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    before = {sig: signal.SIG_DFL if h is None else h for sig, h in before.items()}

    def handle(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        previous = before[signal.Signals(sig)]
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, previous in before.items():
            if signal.getsignal(sig) is handle:  # unless someone put theirs in front since
                signal.signal(sig, previous)
