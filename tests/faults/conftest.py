"""Fault-injection scenarios: real control-plane, worker, serving, Postgres and SeaweedFS
processes on loopback, each test bounded in time. Helpers in ``tests/faults/cluster.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pg import postgres_unavailable, throwaway_database


def need_postgres() -> None:
    if (why := postgres_unavailable()) is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway database on the shared Postgres (migrated by the control plane)."""
    need_postgres()
    with throwaway_database("mp_faults") as url:
        yield url
