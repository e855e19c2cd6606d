"""registry/'s modules import each other without a cycle.

The graph is read from the source with the standard library's `ast`, never by importing it.
An edge is an import that runs when the module is loaded: at the top level, in a class body,
in a `try` or an `if` — `if TYPE_CHECKING:` included, so a cycle cannot hide there. Imports
inside a function run only with the function and are left out. Importing `a.b.c` runs
`a/__init__.py` and `a/b/__init__.py` first: edges to those packages too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "registry"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{MODULES[self.source].relative_to(ROOT)}:{self.line}: imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {
    module_name(path): path
    for path in sorted((ROOT / PACKAGE).rglob("*.py"))
    if "__pycache__" not in path.parts
}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def ours(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of registry/."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:end])) in MODULES:
            return candidate
    return None


def loaded_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is loaded (none inside functions)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from loaded_imports(node)


def named(source: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Every dotted name an import may load: ``from a import b`` loads ``a`` and maybe ``a.b``."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative to the importing module's package
        package = source if source in PACKAGES else source.rpartition(".")[0]
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def edges_of(source: str) -> Iterator[Edge]:
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"), str(MODULES[source]))
    running = set(parents(source)) | {source}  # already being imported when this one runs
    for node in loaded_imports(tree):
        targets = {t for t in map(ours, named(source, node)) if t is not None}
        targets |= {p for t in targets for p in parents(t) if p in PACKAGES}
        for target in sorted(targets - running):
            yield Edge(source, target, node.lineno)


GRAPH: dict[str, list[Edge]] = {name: list(edges_of(name)) for name in MODULES}


def find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One cycle as the edges that make it, or ``None`` (depth-first, iterative)."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        # (module, its edges still to follow, the edge that led to it)
        stack: list[tuple[str, Iterator[Edge], Edge | None]] = [(root, iter(graph[root]), None)]
        while stack:
            node, edges, _ = stack[-1]
            edge = next(edges, None)
            if edge is None:
                stack.pop()
                done.add(node)
            elif any(edge.target == module for module, _, _ in stack):
                at = next(i for i, (module, _, _) in enumerate(stack) if module == edge.target)
                return [e for _, _, e in stack[at + 1 :] if e is not None] + [edge]
            elif edge.target not in done:
                stack.append((edge.target, iter(graph.get(edge.target, [])), edge))
    return None


def test_the_import_graph_of_registry_is_read() -> None:
    # Guards the walker: a broken one would pass the next test with an empty graph.
    assert len(MODULES) > 50
    targets = {edge.target for edge in GRAPH["registry.app"]}
    assert {"registry.policy", "registry.authentication", "registry.routes"} <= targets


def test_registry_has_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    if cycle is not None:
        loop = " -> ".join([cycle[0].source, *(edge.target for edge in cycle)])
        pytest.fail(
            f"import cycle in registry/: {loop}\n  " + "\n  ".join(map(str, cycle)),
            pytrace=False,
        )


def test_the_cycle_finder_reports_a_cycle() -> None:
    a_b, b_c, c_a = Edge("a", "b", 1), Edge("b", "c", 2), Edge("c", "a", 3)
    graph = {"a": [a_b], "b": [b_c], "c": [c_a], "d": [Edge("d", "a", 4)]}
    assert find_cycle(graph) == [a_b, b_c, c_a]
    assert find_cycle({"a": [a_b], "b": [b_c], "c": []}) is None
