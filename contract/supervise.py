"""N copies of a server process on one port (``SO_REUSEPORT``: the kernel spreads the
connections), supervised by their parent: SIGTERM and SIGINT are passed on, and one that
fails stops the others. Used by ``python -m serving --workers N`` and ``python -m gateway
--workers N``."""

from __future__ import annotations

import signal
import subprocess
import time
from types import FrameType


def supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every child; the exit status of the first that failed, else 0. A child
    ended by a signal passed on to it did not fail (uvicorn re-raises the signal it
    stopped on)."""
    stopping: list[int] = []

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while any(child.poll() is None for child in children):
        if not stopping and any(c.returncode not in (None, 0) for c in children):
            forward(signal.SIGTERM, None)  # one could not start: stop the others too
        time.sleep(0.2)
    clean = {0, *(-sig for sig in stopping)}
    failed = [child.returncode for child in children if child.returncode not in clean]
    return failed[0] if failed else 0
