"""Reading a raw ASGI scope, for the pure-ASGI fronts that run before FastAPI parses it
(request ids, authentication, the hot-read front)."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lowercase bytes, as ASGI gives them)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None
