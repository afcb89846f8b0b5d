"""pyproject.toml declares what probe imports: a module-level import of a package that only arrives as
somebody else's dependency (pydantic came with mlflow, typer and fastapi) breaks a plain install."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported at module level (imports inside functions are lazy, on purpose)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            for requirement in project["dependencies"]}


def test_every_package_probe_imports_at_module_level_is_a_declared_dependency():
    imported = set().union(*(module_level_imports(path) for path in (ROOT / "probe").rglob("*.py")))
    third_party = imported - set(sys.stdlib_module_names) - {"probe", "probe_plugins", "__future__"}
    assert {"torch", "transformers", "pydantic", "pluggy"} <= third_party  # the scan sees real imports
    distributions = packages_distributions()
    declared = declared_distributions()
    missing = {name for name in third_party
               if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared}
    assert not missing, f"imported at module level but not in pyproject.toml's dependencies: {sorted(missing)}"
