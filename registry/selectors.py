"""The ``{version}`` of a path: a number, ``latest`` or an alias written ``@production``."""

from __future__ import annotations

import re

from registry.errors import InvalidSelector
from registry.repositories.versions import Selector

_ALIAS = re.compile(r"^@[a-z0-9][a-z0-9._-]{0,62}$")


def parse_selector(raw: str) -> Selector:
    """``3``, ``latest`` or ``@production``."""
    if raw.isdigit() and raw.isascii():
        return int(raw)
    if raw == "latest" or _ALIAS.match(raw):
        return raw
    raise InvalidSelector(
        f"{raw!r} is not a version: use a number, 'latest' or '@alias' (e.g. '@production')"
    )
