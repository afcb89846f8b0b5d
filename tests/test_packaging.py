"""pyproject.toml declares what probe imports: an import of a package that only arrives as somebody else's
dependency (pydantic came with mlflow and fastapi) breaks a plain install, or a later release of that
somebody. Every import in probe/ and plugins/ (probe_plugins), at any level, must name a declared
dependency, or an optional extra's when it is imported inside a function (the extras are imported lazily,
where they are needed)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import pytest

    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
OWN = {"probe", "probe_plugins", "__future__"}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level package names imported by ``path``: (at module level, inside functions or classes).
    An import under ``try: … except ImportError`` has a fallback, so it is left out."""
    tree = ast.parse(path.read_text())
    module_level = {id(node) for node in tree.body}
    guarded = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) and _catches_import_error(node)
               for statement in node.body for inner in ast.walk(statement)}
    at_top, inside = set(), set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = {node.module.split(".")[0]}
        else:
            continue
        (at_top if id(node) in module_level else inside).update(names)
    return at_top, inside


def _catches_import_error(node: ast.Try) -> bool:
    names = {getattr(handler.type, "id", None) for handler in node.handlers}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalized(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]) for requirement in requirements}


def distributions_of(package: str) -> set[str]:
    return {normalized(d) for d in packages_distributions().get(package, [package])}


def test_every_package_probe_imports_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = requirement_names(project["dependencies"])
    optional = set().union(*(requirement_names(r) for r in project["optional-dependencies"].values()))
    at_top, inside = set(), set()
    for path in [*(ROOT / "probe").rglob("*.py"), *(ROOT / "plugins").glob("*.py")]:
        top, nested = imports(path)
        at_top |= top - set(sys.stdlib_module_names) - OWN
        inside |= nested - set(sys.stdlib_module_names) - OWN
    assert {"torch", "transformers", "pydantic", "gguf", "sklearn"} <= at_top | inside  # it sees real imports
    undeclared_at_top = sorted(p for p in at_top if not distributions_of(p) & required)
    undeclared_inside = sorted(p for p in inside if not distributions_of(p) & (required | optional))
    assert not undeclared_at_top, f"imported at module level, not in dependencies: {undeclared_at_top}"
    assert not undeclared_inside, f"imported, in neither dependencies nor an extra: {undeclared_inside}"
