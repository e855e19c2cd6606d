"""Reading docker-compose.yml, the Dockerfile and the proxy config the way Docker would,
without Docker: interpolation, merge keys, Dockerfile instructions, nginx directives."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = environ.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else current is None) else str(current)
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else current is None:
                raise ValueError(f"${{{name}}} is required: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(one, value)


def _interpolate_tree(node: Any, environ: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [_interpolate_tree(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, environ) for key, value in node.items()}
    return node


def load_compose(
    path: Path = REPO / "docker-compose.yml", environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """The compose file as `docker compose config` sees it with an empty environment:
    YAML merge keys applied (PyYAML does `<<`), `${...}` resolved to their defaults."""
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), "docker-compose.yml is not a mapping"
    return dict(_interpolate_tree(raw, environ or {}))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose accepts a list of KEY=VALUE too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command(service: dict[str, Any], key: str = "command") -> list[str]:
    value = service.get(key) or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# -- Dockerfile ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    """Instructions in order; continuation lines joined, comments and blank lines dropped
    (heredocs are not used in our Dockerfile, and this reader refuses them)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        assert "<<" not in args or keyword.upper() != "RUN", f"line {start}: heredoc"
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    return instructions


def exec_form(args: str) -> list[str]:
    """A `CMD`/`ENTRYPOINT` in exec (JSON) form; shell form is refused (no signal handling)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


# -- nginx ----------------------------------------------------------------------------------


@dataclass
class NginxConfig:
    upstreams: dict[str, list[tuple[str, int]]]
    listen: list[int]
    proxy_pass: list[str]
    directives: dict[str, list[str]]


def nginx(path: Path) -> NginxConfig:
    text = re.sub(r"#[^\n]*", "", path.read_text())
    upstreams: dict[str, list[tuple[str, int]]] = {}
    for name, body in re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text):
        servers = re.findall(r"^\s*server\s+([^\s:;]+):(\d+)", body, re.MULTILINE)
        upstreams[name] = [(host, int(port)) for host, port in servers]
    directives: dict[str, list[str]] = {}
    for key, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", text, re.MULTILINE):
        directives.setdefault(key, []).append(value.strip())
    listen = [int(v.split()[0].rsplit(":", 1)[-1]) for v in directives.get("listen", [])]
    return NginxConfig(upstreams, listen, directives.get("proxy_pass", []), directives)
