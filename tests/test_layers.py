"""The house's one-way imports, read from every import statement in probe/ (function-level ones included):
each layer imports only from the layers below it, the core never reaches the plugin manager, nothing
imports the command line, and no module reaches itself again through its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "probe"

# Bottom to top. A module may import from its own layer and the layers before it in this list.
LAYERS = ["base", "core", "store", "scale", "science", "plugins", "pipeline", "report", "app", "sweep", "cli"]
TOP_LEVEL = {  # the modules outside the layer folders, and where they stand
    # the package root imports hookspecs alone when it runs (its public names are imported on first use)
    "probe": "base", "probe.errors": "base", "probe.hookspecs": "base", "probe.plugins": "plugins",
    "probe.api": "app", "probe.notebook": "app",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    part = module.split(".")[1]
    return "app" if part == "builtin" else part


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The probe modules ``name`` imports anywhere in its file, resolved to the module imported."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "probe"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] != "probe":
                continue
            for alias in node.names:  # `from probe.core import swap` imports the module probe.core.swap
                candidate = f"{origin}.{alias.name}"
                found.add(candidate if candidate in known else origin)
    return {module for module in found if module != name}


def run_time_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer(graph):
    unknown = sorted(name for name in graph if layer_of(name) not in LAYERS)
    assert not unknown, f"modules in no layer: {unknown}"


def test_at_most_eight_modules_at_the_top():
    assert len(list(PACKAGE.glob("*.py"))) <= 8


def test_the_package_root_imports_only_the_base(graph):
    assert {layer_of(target) for target in graph["probe"]} <= {"base"}


def test_imports_go_down_only(graph):
    wrong = [f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
             for name, targets in graph.items() for target in targets
             if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name))]
    assert not wrong, "\n".join(sorted(wrong))


def test_core_never_reaches_the_plugin_manager(graph):
    reached = {name: sorted(t for t in targets if layer_of(t) not in ("base", "core"))
               for name, targets in graph.items() if layer_of(name) == "core"}
    assert not {name: found for name, found in reached.items() if found}


def test_nothing_imports_the_command_line(graph):
    importers = sorted(name for name, targets in graph.items()
                       if layer_of(name) != "cli" and any(layer_of(t) == "cli" for t in targets))
    assert not importers


def test_no_import_circles(graph):
    circles = strongly_connected(graph)
    assert not circles, "import circles: " + "; ".join(" ↔ ".join(sorted(c)) for c in circles)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of two or more modules that reach each other."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups
