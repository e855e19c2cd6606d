"""What the command line prints: rich tables for people, ``--output json`` for scripts,
and one line on stderr for an error."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
PIPE_WIDTH = 160  # tables piped to a file or a program are not folded to 80 columns


def say(*objects: Any, **kwargs: Any) -> None:
    """Print to stdout through rich."""
    if not out.is_terminal:
        out.width = max(out.width, PIPE_WIDTH)
    out.print(*objects, **kwargs)


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table for people, json for scripts")
]


def fail(message: str, code: int = 1) -> NoReturn:
    # the message is text, not markup: `modelplane[server]` and `[1, 4]` print as written
    err.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def as_json(data: BaseModel | Sequence[BaseModel] | dict[str, Any] | list[Any]) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [as_json(item) for item in data]
    return data


def print_json(data: Any) -> None:
    print(json.dumps(as_json(data), indent=2, default=str))


def show(output: Output, data: Any, table: Callable[[], Table | str | None] | Table | None) -> None:
    """JSON of ``data``, or the table (built lazily)."""
    if output is Output.json:
        print_json(data)
        return
    rendered = table() if callable(table) else table
    if rendered is not None:
        say(rendered)


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(*columns, title=title, title_justify="left", header_style="bold", box=None)
    t.pad_edge = False
    return t


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(0, int(seconds))}s ago"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def tags(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


def parse_pairs(items: list[str] | None, what: str, sep: str = "=") -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, found, value = item.partition(sep)
        if not found or not key:
            fail(f"{what} {item!r} must look like key{sep}value")
        pairs[key] = value
    return pairs
