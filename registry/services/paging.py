"""One page of a list (``Page``: ``items`` and an opaque ``next_cursor``) from its rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from contract.schemas import Page
from registry.repositories.base import encode_cursor

R = TypeVar("R")
T = TypeVar("T")


def to_page(rows: list[R], limit: int, key: Callable[[R], Any], out: Callable[[R], T]) -> Page[T]:
    """Rows fetched with ``limit + 1``: the extra one only says another page exists."""
    cursor = encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None
    return Page[T](items=[out(r) for r in rows[:limit]], next_cursor=cursor)
