"""Child processes that do not outlive their parent (the deployer's serving processes,
`modelplane up`'s worker, the native gateway's HAProxy)."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """`preexec_fn`: the child gets SIGTERM when the thread that forked it dies (Linux).

    A worker killed with -9 then takes its serving processes down (they drain and
    deregister) instead of leaving orphans that keep a slot and an endpoint; `modelplane up`
    takes its worker down however it exits. Fork from a thread that lives as long as the
    parent (the main thread): the signal follows the forking thread, not the process.
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
