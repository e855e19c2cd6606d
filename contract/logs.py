"""Structured logs for every Modelplane process (control plane, deployer, serving).

Stdlib only, like ``schemas.py``, so the worker and serving processes share it. Records
become one JSON object per line when stderr is not a terminal (``auto``), or readable text
on a terminal. The request id (``X-Request-ID``) rides in a context variable: the control
plane sets it per request, the worker per replica action (the revision's request id), the
serving process once for its life; every record carries it, so
``grep <request id>`` across the logs follows a rollout from the API call to the model.
A caller's ``X-Request-ID`` is kept only when ``sane_request_id`` passes it (it goes into log
lines and answer headers), else the id is a new one (``new_request_id``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("modelplane_request_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def sane_request_id(raw: str | None) -> str | None:
    """``raw`` when it is safe to log and echo back (1-128 printable ASCII characters, no
    spaces or quotes), else ``None``."""
    return raw if raw is not None and _SANE_REQUEST_ID.match(raw) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI-coloured copy of message
)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (``None`` outside any request)."""

    def __init__(self, default: str | None = None) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get() or self.default
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...extra, "exc"}`` per line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [request_id={rid}]" if rid else line


def use_json(fmt: str) -> bool:
    if fmt == "json":
        return True
    if fmt == "text":
        return False
    return not sys.stderr.isatty()


def configure_logging(
    fmt: str = "auto",
    level: str | int = "INFO",
    *,
    static: dict[str, Any] | None = None,
    default_request_id: str | None = None,
) -> None:
    """One stderr handler on the root logger (replacing any), JSON or text by ``fmt``
    (``auto``: JSON unless stderr is a terminal). ``static`` fields go on every JSON line
    (e.g. the process's role); ``default_request_id`` stamps records outside any request."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static) if use_json(fmt) else TextFormatter())
    handler.addFilter(RequestIdFilter(default_request_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
