"""HAProxy's per-server counters, read through its runtime API and counted per revision.

For the deployments whose calls are not each logged (no canary: `gateway.native.config`),
the calls and errors each revision answered are the differences of its servers' counters
between two reads: calls = answers of every class (``hrsp_1xx`` … ``hrsp_other``) plus
answers that broke off (``eresp``), errors = ``hrsp_5xx`` plus ``eresp``. A server and its
revision are the same in the deployment's backend and in its version backends, so both add
up. Counters belong to one worker: a reload's new worker starts at zero, and what the old
one answers after the last read before the reload (at most a call per open connection:
``idle-close-on-response``) is not counted.
"""

from __future__ import annotations

import csv
import io
from typing import NamedTuple

from gateway.counts import Counts
from gateway.native.config import EVERY, revision_of

ANSWERS = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other", "eresp")
ERRORS = ("hrsp_5xx", "eresp")


class Row(NamedTuple):
    backend: str
    server: str
    calls: int
    errors: int


def parse(pid_and_stats: str) -> tuple[int | None, list[Row]]:
    """The worker's pid (``show info``) and its servers' rows (``show stat``), from the
    answer to ``show info;show stat``."""
    pid = None
    header: list[str] | None = None
    rows: list[Row] = []
    lines = pid_and_stats.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("Pid:"):
            pid = int(line.split(":", 1)[1])
        elif line.startswith("# pxname,"):
            header = line[2:].split(",")
            body = "\n".join(lines[n + 1 :])
            break
    if header is None:
        return pid, rows
    for fields in csv.reader(io.StringIO(body)):
        if len(fields) < len(header):
            continue
        row = dict(zip(header, fields, strict=False))
        if row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        calls = sum(int(row.get(k) or 0) for k in ANSWERS)
        errors = sum(int(row.get(k) or 0) for k in ERRORS)
        rows.append(Row(row["pxname"], row["svname"], calls, errors))
    return pid, rows


class StatsCounter:
    """Adds each read's differences to ``counts``."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts
        self._pid: int | None = None
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    def add(self, pid: int | None, rows: list[Row]) -> None:
        if pid != self._pid:  # a new worker: its counters started at zero
            self._pid = pid
            self._seen = {}
        for row in rows:
            if row.server.endswith(EVERY) or not row.backend.startswith("d."):
                continue  # each call logged (`gateway.native.logs`), or the slow path
            revision = revision_of(row.server)
            if revision is None:
                continue
            key = (row.backend, row.server)
            calls, errors = self._seen.get(key, (0, 0))
            if row.calls < calls or row.errors < errors:
                continue  # a read that started before the last one counted: stale
            self._seen[key] = (row.calls, row.errors)
            if row.calls > calls or row.errors > errors:
                deployment = row.backend[2:].split(".", 1)[0]  # d.<name>[.v<version>]
                tally = self._counts.tally(deployment, revision)
                tally.calls += row.calls - calls
                tally.errors += row.errors - errors
