"""The docs hold together: every relative link in the README, CONTRIBUTING.md, docs/ and
bench/README.md reaches a file (and a heading, for `#anchor`, by GitHub's slug rules), and every
`modelplane ...` command they show names a real command of `cli.app`."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import typer

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "bench" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
)
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console", "zsh", "shell-session"}

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
# `modelplane` run as a command: a shell word of its own, or `.venv/bin/modelplane`; never
# part of a word (`modelplane_dev`, `modelplane[server]`) or of a URL (`:5432/modelplane`).
COMMAND = re.compile(r"(?:^|(?<=[\s(=])|(?<=bin/))modelplane(?=\s|$)((?:\s+[^\s|;&)#>`\"]+)*)")
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|…|\.\.\.)$")


@dataclass(frozen=True)
class Line:
    path: Path
    number: int
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.number}"


def closes(text: str, fence: str) -> bool:
    """A closing fence: the opening's character, at least as many, nothing after."""
    stripped = text.strip()
    return stripped.startswith(fence) and stripped.strip(fence[0]) == ""


def split(path: Path) -> tuple[list[Line], list[tuple[str, list[Line]]]]:
    """Prose lines, and the fenced blocks with their info string."""
    prose: list[Line] = []
    blocks: list[tuple[str, list[Line]]] = []
    fence: str | None = None
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(text)
        if fence is None and match:
            fence = match.group(1)
            blocks.append((match.group(2).lower(), []))
        elif fence is not None and closes(text, fence):
            fence = None
        elif fence is not None:
            blocks[-1][1].append(Line(path, number, text))
        else:
            prose.append(Line(path, number, text))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, everything but letters,
    digits, `_`, `-` and spaces dropped, each space a `-`."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    kept = []
    for char in text.strip().lower():
        category = unicodedata.category(char)
        if char in "-_ " or category[0] in "LN" or category == "Mn":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split(path)
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        found.update(HTML_ID.findall(line.text))
        match = HEADING.match(line.text)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[tuple[Line, str]]:
    prose, _ = split(path)
    found = []
    for line in prose:
        text = CODE_SPAN.sub("", line.text)
        targets = LINK.findall(text)
        reference = REFERENCE.match(text)
        if reference:
            targets.append(reference.group(1))
        found += [(line, target) for target in targets]
    return found


def broken(line: Line, target: str) -> str | None:
    """Why a relative link does not resolve, or None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return None  # https:, mailto: ...: not ours to check here
    file_part, _, anchor = target.partition("#")
    if file_part.startswith("/"):
        resolved = ROOT / unquote(file_part.lstrip("/"))
    else:
        resolved = (line.path.parent / unquote(file_part)) if file_part else line.path
    resolved = resolved.resolve()
    if not resolved.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not resolved.exists():
        return f"{target}: no such file"
    if anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
        return f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    bad = [f"{line}: {why}" for line, target in links(path) if (why := broken(line, target))]
    assert not bad, "broken links:\n  " + "\n  ".join(bad)


def test_the_link_checker_sees_the_links() -> None:
    # A guard against a regex that matches nothing and passes every file vacuously.
    found = {target for path in DOCS for _, target in links(path)}
    assert {"docs/architecture.md", "CONTRIBUTING.md", "../bench/README.md"} <= found
    assert "security.md#api-keys" in found
    assert slug("The stable URL: `/serve/{deployment}` (`--stable-url`)") == (
        "the-stable-url-servedeployment---stable-url"
    )
    assert slug("Registry (`bench/registry_reads.py`)") == "registry-benchregistry_readspy"


# -- commands ---------------------------------------------------------------------------


def command_lines(path: Path) -> list[tuple[Line, str]]:
    """`modelplane ...` as run in fenced shell blocks, and in inline code in the prose."""
    prose, blocks = split(path)
    found = []
    for info, lines in blocks:
        if info not in SHELL_BLOCKS:
            continue
        for line in lines:
            text = line.text
            if info == "console" and not text.lstrip().startswith("$"):
                continue  # output, not a command
            found += [(line, "modelplane" + m.group(1)) for m in COMMAND.finditer(text)]
    for line in prose:
        for span in CODE_SPAN.finditer(line.text):
            code = span.group(2).strip()
            if code.startswith("modelplane "):
                found += [(line, "modelplane" + m.group(1)) for m in COMMAND.finditer(code)]
    return found


@cache
def root_command() -> Any:
    from cli.app import app

    return typer.main.get_command(app)


def subcommands(group: Any) -> dict[str, Any]:
    context = group.context_class(group)
    return {name: group.get_command(context, name) for name in group.list_commands(context)}


def takes_value(command: Any, token: str) -> bool:
    name = token.split("=", 1)[0]
    for param in command.params:
        if name in [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]:
            return not getattr(param, "is_flag", False) and "=" not in token
    return False


def unknown_command(command_line: str) -> str | None:
    """What in `modelplane a b ...` is not a command of cli.app, or None."""
    words = command_line.split()[1:]
    command, path = root_command(), ["modelplane"]
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if not hasattr(command, "list_commands"):
            return None  # a leaf command: the rest are its arguments
        if word.startswith("-"):
            skip = takes_value(command, word)
            continue
        if PLACEHOLDER.match(word):
            return None  # `modelplane COMMAND --help`: any command
        children = subcommands(command)
        if word not in children:
            known = ", ".join(sorted(children))
            return f"`{' '.join(path)} {word}`: no such command (there are: {known})"
        command = children[word]
        path.append(word)
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_modelplane_command_shown_exists(path: Path) -> None:
    bad = [
        f"{line}: {why}"
        for line, command_line in command_lines(path)
        if (why := unknown_command(command_line))
    ]
    assert not bad, "commands that `modelplane` does not have:\n  " + "\n  ".join(bad)


def test_the_command_checker_sees_the_commands() -> None:
    shown = {text for path in DOCS for _, text in command_lines(path)}
    assert any(text.startswith("modelplane push demo") for text in shown)
    assert any(text.startswith("modelplane keys create") for text in shown)
    assert unknown_command("modelplane keys create --name ci") is None
    assert unknown_command("modelplane --url http://x deployments show demo") is None
    assert unknown_command("modelplane keys mint") is not None
    assert unknown_command("modelplane deploymnts ls") is not None
