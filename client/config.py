"""Where the SDK and the command line find the control plane and their token.

Order (the first that gives a value wins): explicit arguments, ``MODELPLANE_URL`` /
``MODELPLANE_TOKEN``, ``$MODELPLANE_HOME/credentials.json`` (written by ``modelplane up``),
``~/.config/modelplane/credentials.json`` (written by ``modelplane login``), and last
``http://127.0.0.1:8000`` without a token. A token from a credentials file is only used
with the URL saved beside it, so one server's token is never sent to another.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
FILE_NAME = "credentials.json"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    source: str  # where the URL came from, for messages


def home_credentials() -> Path:
    return Path(os.environ.get("MODELPLANE_HOME") or ".modelplane") / FILE_NAME


def user_credentials() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelplane" / FILE_NAME


def normalise(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def read_credentials(path: Path) -> tuple[str | None, str | None]:
    """``(url, token)`` saved in ``path``; ``(None, None)`` if absent or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    url, token = doc.get("url"), doc.get("token")
    return (
        normalise(url) if isinstance(url, str) and url else None,
        token if isinstance(token, str) and token else None,
    )


def resolve(url: str | None = None, token: str | None = None) -> Connection:
    source = "argument" if url else "MODELPLANE_URL"
    url = url or os.environ.get("MODELPLANE_URL") or None
    token = token or os.environ.get("MODELPLANE_TOKEN") or None
    url = normalise(url) if url else None
    for path in (home_credentials(), user_credentials()):
        saved_url, saved_token = read_credentials(path)
        if saved_url is None:
            continue
        if url is None:
            url, source = saved_url, str(path)
        if token is None and saved_url == url:
            token = saved_token
    if url is None:
        return Connection(DEFAULT_URL, token, "default")
    return Connection(url, token, source)


def save_credentials(url: str, token: str | None, path: Path | None = None) -> Path:
    """Write ``{"url", "token"}`` readable by the owner only (0600 from the first byte)."""
    path = path or user_credentials()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"url": normalise(url), "token": token}, indent=2) + "\n"
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(body)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
