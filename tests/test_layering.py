"""The package's layering, pinned: every module sits on one layer of LAYERS (lowest first) and imports only
modules on its own layer or below, at the top of the file or inside a function alike; and no set of modules
imports itself round in a circle. A new module must be placed here before its first import passes."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nmfailover"

# Lowest first. What a layer may use is everything above it in this list; the comments say what it is.
LAYERS: list[list[str]] = [
    # Pure values and rules, no I/O of their own; the exception root.
    ["nmfailover", "nmfailover.errors", "nmfailover.log", "nmfailover.policy", "nmfailover.status"],
    ["nmfailover.budget"],
    ["nmfailover.runstate", "nmfailover.sdnotify", "nmfailover.traffic", "nmfailover.backoff"],
    ["nmfailover.mptcp"],
    # The one way onto a D-Bus bus.
    ["nmfailover.bus"],
    # NetworkManager: its names, then its client's parts by job.
    ["nmfailover.nm.names"],
    ["nmfailover.nm.values"],
    ["nmfailover.nm.edits"],
    ["nmfailover.nm.events"],
    ["nmfailover.nm.session"],
    ["nmfailover.nm.reading"],
    ["nmfailover.nm.writing"],
    ["nmfailover.nm.client"],
    ["nmfailover.nm"],
    # Probing the uplinks, and the settings.
    ["nmfailover.transport"],
    ["nmfailover.probe"],
    ["nmfailover.echo"],
    ["nmfailover.detection", "nmfailover.discovery", "nmfailover.config"],
    # The engine.
    ["nmfailover.engine.supervisor", "nmfailover.engine.state"],
    ["nmfailover.engine.actuator"],
    ["nmfailover.engine.intake"],
    ["nmfailover.engine.ondemand", "nmfailover.engine.evidence", "nmfailover.engine.probing"],
    ["nmfailover.engine.core"],
    ["nmfailover.engine.operator"],
    ["nmfailover.engine"],
    # What the daemon offers around the engine, and its control interface.
    ["nmfailover.hooks", "nmfailover.tunnels", "nmfailover.metrics"],
    ["nmfailover.control"],
    # The desktop side: what a person sees, then the agent that shows it.
    ["nmfailover.notice", "nmfailover.tray"],
    ["nmfailover.indicator"],
    ["nmfailover.notify", "nmfailover.follow"],
    # The daemon, and setting a machine up and checking it.
    ["nmfailover.daemon", "nmfailover.system_files"],
    ["nmfailover.doctor"],
    # The lab: above the daemon, so the daemon can never import it; only the command line's demo may.
    ["nmfailover.lab.upstream", "nmfailover.lab.usertraffic", "nmfailover.lab.stream"],
    ["nmfailover.lab.sandbox"],
    ["nmfailover.lab.demo", "nmfailover.lab"],
    ["nmfailover.lab.soak"],
    # The command line's shape, what documents it, and the command line itself.
    ["nmfailover.commandline"],
    ["nmfailover.docs"],
    ["nmfailover.manpage"],
    ["nmfailover.cli"],
    ["nmfailover.__main__"],
]
LAYER = {module: number for number, layer in enumerate(LAYERS) for module in layer}


def module_files() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def imported(module: str, tree: ast.AST, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module of the package) for every import anywhere in `tree`: `from . import x` names the
    submodule x where there is one. Importing a.b.c runs a/b/__init__ first, so it imports a.b too
    (but not a package the importer itself is inside: Python has that one under way already)."""
    own_package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            line, targets = node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            line = node.lineno
            if node.level:
                base = own_package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for length in range(1, len(parts) + 1):
                name = ".".join(parts[:length])
                inside = module == name or module.startswith(name + ".")
                if name in MODULES and name != module and not (inside and name != target):
                    yield line, name


def import_graph() -> dict[str, dict[str, int]]:
    """Each module's imports of the package's modules, with the line of the first."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for line, target in imported(module, ast.parse(path.read_text()), path.name == "__init__.py"):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    counter = itertools.count()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_exactly_one_layer() -> None:
    placed = [module for layer in LAYERS for module in layer]
    assert sorted(set(MODULES) - set(placed)) == [], "modules with no layer: add them to LAYERS"
    assert sorted(set(placed) - set(MODULES)) == [], "layers name modules that do not exist"
    assert len(placed) == len(set(placed)), "a module on two layers"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} imports {target}"
        for module, edges in sorted(import_graph().items())
        for target, line in sorted(edges.items())
        if LAYER[target] > LAYER[module]
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    ("source", "upward", "circle"),
    [
        ("from .cli import main\n", True, True),  # at the top of the file
        ("def later() -> None:\n    from .cli import main\n", True, True),  # inside a function
        ("from . import cli\n", True, True),
        ("import nmfailover.cli\n", True, True),
        ("from .errors import NMError\n", False, False),
    ],
)
def test_the_checks_see_every_kind_of_import(source: str, upward: bool, circle: bool) -> None:
    """bus.py, low in the layers, with one more import: the checks catch it however it is written."""
    graph = import_graph()
    edges = dict(graph["nmfailover.bus"])
    for line, target in imported("nmfailover.bus", ast.parse(source), False):
        edges.setdefault(target, line)
    graph["nmfailover.bus"] = edges
    assert any(LAYER[target] > LAYER["nmfailover.bus"] for target in edges) is upward
    assert bool(cycles(graph)) is circle


def test_a_module_of_a_package_imports_the_package_too() -> None:
    """Importing nmfailover.nm.names runs nmfailover/nm/__init__.py first, which imports the whole client:
    a low module importing it is importing the client."""
    edges = {
        target for _, target in imported("nmfailover.bus", ast.parse("from .nm.names import NM_BUS\n"), False)
    }
    assert edges == {"nmfailover.nm.names", "nmfailover.nm"}
