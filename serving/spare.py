"""`python -m serving.spare`: an interpreter that imports serving, then waits to become one.

Starting `python -m serving` spends seconds importing torch before it reads a byte of the
model. The worker keeps one spare started ahead of time: it imports `serving` (and torch
with it; CUDA stays uninitialised), then blocks on stdin for one JSON line
`{"argv": [...], "env": {...}}`, applies the environment (`CUDA_VISIBLE_DEVICES` is read
when CUDA initialises, which has not happened yet) and runs `serving`'s main with `argv`:
from there it is the same process `python -m serving ARGV` would have been.
"""

from __future__ import annotations

import os
import sys

import orjson


def main() -> int:
    from serving.__main__ import main as serving_main

    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # the worker closed our stdin without a job: not needed
    job = orjson.loads(line)
    os.environ.update(job["env"])
    sys.argv = ["python -m serving", *job["argv"]]
    return serving_main(job["argv"])


if __name__ == "__main__":
    from serving.__main__ import exit_now

    exit_now(main())
