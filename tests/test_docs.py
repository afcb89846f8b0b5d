"""The plugin author's reference (docs/plugins.md) describes everything a plugin can touch: every hook in
probe/hookspecs.py, every RunContext field and property, every key of results.json and of its layer rows.
(Every page's code blocks, docs/api.md's included, run in tests/test_docs_blocks.py.)"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

from report_runs import report_run

import probe
from probe import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE = (DOCS / "plugins.md").read_text()


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "probe_spec")]


def run_context_class():
    """RunContext wherever it lives in probe (the pipeline may move it): the dataclass of that name."""
    found = set()
    for info in pkgutil.walk_packages(probe.__path__, "probe."):
        module = importlib.import_module(info.name)
        candidate = getattr(module, "RunContext", None)
        if inspect.isclass(candidate) and dataclasses.is_dataclass(candidate):
            found.add(candidate)
    assert len(found) == 1, f"expected one RunContext dataclass in probe, found {found}"
    return found.pop()


def documented(name: str) -> bool:
    return f"`{name}`" in GUIDE


def test_every_hook_has_a_section():
    names = hook_names()
    assert len(names) >= 10
    missing = [name for name in names if f"### `{name}`" not in GUIDE]
    assert not missing, f"hooks without a section in docs/plugins.md: {missing}"


def test_every_run_context_field_and_property_is_documented():
    cls = run_context_class()
    names = [field.name for field in dataclasses.fields(cls) if not field.name.startswith("_")]  # public only
    names += [name for name, member in inspect.getmembers(cls) if not name.startswith("_")
              and (isinstance(member, property) or inspect.isfunction(member))]
    missing = [name for name in names if not documented(f"context.{name}")]
    assert not missing, f"RunContext members not in docs/plugins.md: {missing}"


def test_every_results_key_is_documented(tmp_path_factory):
    results = json.loads((report_run(tmp_path_factory) / "results.json").read_text())
    row_keys = {key for row in results["layers"] for key in row}
    missing = [key for key in [*results, *row_keys] if not documented(key)]
    assert not missing, f"results.json keys not in docs/plugins.md: {missing}"


def test_every_dataset_column_is_documented():
    from probe.pipeline.data import COLUMNS

    assert not [c for c in COLUMNS if not documented(c)]
