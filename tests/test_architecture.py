"""The import graph follows docs/architecture.md: every package has one job and imports only
the packages below it. Read with the standard library's `ast`, never by importing our code.

Three kinds of import edge:
- module: runs when the module is imported (the top level, class bodies, `try`/`if` blocks);
- typing: under `if TYPE_CHECKING:`; never runs, but is still a dependency of the design, so it
  counts for cycles and for the allowed directions like a module-level import;
- function: inside a `def`; runs only when the function does. Only `cli/` may reach packages
  it must not import at module level this way, or under `TYPE_CHECKING` (the server packages,
  for the commands that run a server locally); anywhere else the table holds for every kind.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

# docs/architecture.md's table: package -> the packages of ours it may import at module level
# (None: anything). The last test below holds the two in step.
ALLOWED: dict[str, frozenset[str] | None] = {
    "contract": frozenset(),
    "storage": frozenset({"contract"}),
    "registry": frozenset({"contract", "storage", "gateway"}),
    "gateway": frozenset({"contract"}),
    "deployer": frozenset({"contract"}),
    "serving": frozenset({"contract"}),
    "client": frozenset({"contract"}),
    "cli": frozenset({"client", "contract"}),
    "devstack": None,  # anything: it runs the whole topology
    "migrations": frozenset({"registry", "contract"}),
    "bench": None,  # anything but tests (checked below)
    "tests": None,  # anything
}
ANYTHING = {name for name, allowed in ALLOWED.items() if allowed is None}

# What cli/ may import inside a command function only (or under TYPE_CHECKING, which never
# runs): the server side, for `up`, `server`, `migrate`, `worker`, `stack`, `keys --offline`.
CLI_LAZY = frozenset({"registry", "storage", "deployer", "gateway", "devstack"})

# Who may import devstack/ at all: it is a tool, not a library.
DEVSTACK_IMPORTERS = frozenset({"cli", "tests", "bench", "devstack"})

# Third-party packages of the bare `pip install modelplane` (SDK + CLI), by import name.
BARE_INSTALL = frozenset({"httpx", "pydantic", "typer", "rich", "numpy", "tenacity", "click"})
# contract/ is lighter still: what crosses process boundaries needs no CLI toolkit.
CONTRACT_THIRD_PARTY = frozenset({"pydantic", "httpx", "numpy", "tenacity"})


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module of ours, dotted
    kind: str  # "module", "typing" or "function"
    line: int
    implied: bool = False  # a parent package's __init__, run by importing its submodule

    @property
    def source_package(self) -> str:
        return self.source.split(".")[0]

    @property
    def target_package(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        path = module_path(self.source).relative_to(ROOT)
        return f"{path}:{self.line}: {self.source} -> {self.target} ({self.kind})"


def python_files() -> Iterator[Path]:
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(part.startswith(".") or part == "__pycache__" for part in path.parts):
                yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in python_files()}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def module_path(name: str) -> Path:
    return MODULES[name]


def resolve(name: str) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(source: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Every dotted module name an import statement may load (ours or not)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:  # relative: resolved against the importing module's package
        package = source if source in PACKAGES else source.rpartition(".")[0]
        base_parts = package.split(".")
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    yield base
    for alias in node.names:
        if alias.name != "*":
            yield f"{base}.{alias.name}"


def walk_imports(
    tree: ast.AST, kind: str = "module"
) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from walk_imports(node, "function")
        elif isinstance(node, ast.If) and is_type_checking(node.test) and kind == "module":
            for child in node.body:
                yield from walk_imports(ast.Module(body=[child], type_ignores=[]), "typing")
            for child in node.orelse:
                yield from walk_imports(ast.Module(body=[child], type_ignores=[]), kind)
        else:
            yield from walk_imports(node, kind)


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def module_edges(source: str, path: Path) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own_ancestors = set(ancestors(source))
    for node, kind in walk_imports(tree):
        named = {t for t in map(resolve, imported_names(source, node)) if t is not None}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first (the importer's own
        # packages are already running, so they add nothing).
        implied = {p for t in named for p in ancestors(t) if p in PACKAGES} - named
        for target in sorted(named - own_ancestors - {source}):
            yield Edge(source, target, kind, node.lineno)
        for target in sorted(implied - own_ancestors - {source}):
            yield Edge(source, target, kind, node.lineno, implied=True)


def third_party_imports(source: str, path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node, kind in walk_imports(tree):
        if kind != "module" or (isinstance(node, ast.ImportFrom) and node.level):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        for name in names:
            top = (name or "").split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in ALLOWED:
                yield top, node.lineno


EDGES: list[Edge] = [edge for name, path in MODULES.items() for edge in module_edges(name, path)]
# The imports as written: what the package rules judge (an implied parent is in the same package).
WRITTEN = [edge for edge in EDGES if not edge.implied]


def report(title: str, edges: list[Edge] | list[str]) -> str:
    return f"{title} ({len(edges)}):\n  " + "\n  ".join(str(edge) for edge in edges)


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_every_package_of_ours_is_in_the_table() -> None:
    top_level = {
        path.name
        for path in ROOT.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and (any(path.glob("*.py")) or any(path.glob("*/*.py")))
        and path.name not in {"docker", "docs"}
    }
    assert top_level <= set(ALLOWED), (
        f"packages missing from the table: {sorted(top_level - set(ALLOWED))}"
    )


def test_the_import_graph_is_read() -> None:
    # A guard against a broken walker passing every other test vacuously.
    assert len(MODULES) > 100
    sources = {edge.source_package for edge in EDGES if edge.kind == "module"}
    assert {"registry", "cli", "serving", "deployer", "tests"} <= sources


def test_no_import_cycle_among_modules() -> None:
    loaded = [edge for edge in EDGES if edge.kind != "function"]
    cycles = find_cycles(loaded)
    inside = [
        edge
        for edge in loaded
        if any(edge.source in cycle and edge.target in cycle for cycle in cycles)
    ]
    if cycles:
        pytest.fail(
            "import cycles (module-level and TYPE_CHECKING imports):\n  "
            + "\n  ".join(" <-> ".join(cycle) for cycle in cycles)
            + "\n"
            + report("edges inside them", inside),
            pytrace=False,
        )


def allowed(edge: Edge) -> bool:
    source, target = edge.source_package, edge.target_package
    if source == target:
        return True
    if target == "devstack" and source not in DEVSTACK_IMPORTERS:
        return False
    if source == "bench" and target == "tests":
        return False
    if source in ANYTHING:
        return True
    if target in (ALLOWED[source] or ()):
        return True
    # Function-level imports of the server side are cli's one exception; TYPE_CHECKING
    # imports never run, so the bare install without `modelplane[server]` still works.
    return source == "cli" and target in CLI_LAZY and edge.kind in {"function", "typing"}


def test_every_cross_package_import_is_allowed_by_the_table() -> None:
    bad = [edge for edge in WRITTEN if not allowed(edge)]
    if bad:
        pytest.fail(report("imports against docs/architecture.md's table", bad), pytrace=False)


def test_only_cli_imports_other_packages_lazily() -> None:
    # The table holds for imports inside functions too; cli's commands are the exception.
    lazy = [
        edge
        for edge in WRITTEN
        if edge.kind == "function"
        and edge.source_package not in ANYTHING
        and edge.source_package != edge.target_package
        and edge.target_package not in (ALLOWED[edge.source_package] or ())
    ]
    outside_cli = [edge for edge in lazy if edge.source_package != "cli"]
    beyond_server = [edge for edge in lazy if edge.target_package not in CLI_LAZY]
    if outside_cli or beyond_server:
        pytest.fail(
            report("function-level imports the table does not allow", outside_cli + beyond_server),
            pytrace=False,
        )


def test_bench_never_imports_tests() -> None:
    bad = [e for e in WRITTEN if e.source_package == "bench" and e.target_package == "tests"]
    if bad:
        message = report("bench imports tests (tests may use bench, never the reverse)", bad)
        pytest.fail(message, pytrace=False)


def test_the_bare_install_imports_only_its_own_dependencies() -> None:
    # `pip install modelplane` (SDK + CLI) has no server, torch, boto3 or aiohttp: contract/,
    # client/ and cli/ import nothing else when loaded.
    bad = []
    for name, path in MODULES.items():
        package = name.split(".")[0]
        if package not in {"contract", "client", "cli"}:
            continue
        permitted = CONTRACT_THIRD_PARTY if package == "contract" else BARE_INSTALL
        bad += [
            f"{path.relative_to(ROOT)}:{line}: {name} -> {top}"
            for top, line in third_party_imports(name, path)
            if top not in permitted
        ]
    if bad:
        message = report("module-level imports beyond the bare install's dependencies", bad)
        pytest.fail(message, pytrace=False)


def documented_table() -> dict[str, tuple[frozenset[str] | None, frozenset[str]]]:
    """docs/architecture.md's package table: package -> (what it may import at module level,
    None for anything; what it may import inside functions only, after a `;`)."""
    table: dict[str, tuple[frozenset[str] | None, frozenset[str]]] = {}
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package, rule in re.findall(r"^\| `(\w+)/` \|.*\| ([^|]*) \|$", text, re.M):
        eager, _, lazy = rule.partition(";")
        if eager.strip().startswith("anything"):
            table[package] = (None, frozenset())
        else:
            names = re.compile(r"`(\w+)`")
            table[package] = (frozenset(names.findall(eager)), frozenset(names.findall(lazy)))
    return table


def test_the_table_checked_is_the_table_documented() -> None:
    documented = documented_table()
    expected = {
        package: (rule, CLI_LAZY if package == "cli" else frozenset())
        for package, rule in ALLOWED.items()
    }
    assert documented == expected, (
        "docs/architecture.md's package table and ALLOWED/CLI_LAZY in this test differ"
    )
