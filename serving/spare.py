"""`python -m serving.spare`: an interpreter that imports serving, then waits to become one.

Starting `python -m serving` spends seconds importing torch before it reads a byte of the
model. The worker keeps one spare started ahead of time: it imports `serving` (and torch
with it; CUDA stays uninitialised), then blocks on stdin for one JSON line, a
`contract.serving.SpareJob`: `{"settings": {...}, "env": {...}}`. It applies the environment
(`CUDA_VISIBLE_DEVICES` is read when CUDA initialises, which has not happened yet) and runs
with those settings: from there it is the process `python -m serving` would have been.
"""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError

from contract.serving import SpareJob
from serving.__main__ import exit_now, run
from serving.settings import ServingSettings


def main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # the worker closed our stdin without a job: not needed
    try:
        job = SpareJob.model_validate_json(line)
        os.environ.update(job.env)
        # Every field is given: only the API key still comes from the environment.
        settings = ServingSettings(**job.settings.model_dump())
    except ValidationError as exc:
        print(f"python -m serving.spare: invalid job:\n{exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    exit_now(main())
