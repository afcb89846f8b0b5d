"""The plugin author's reference (docs/plugins.md) describes everything a plugin can touch: every hook in
probe/hookspecs.py, every member of the RunData a reporter gets, every key of results.json and of its layer rows.
(Every page's code blocks, docs/api.md's included, run in tests/test_docs_blocks.py.)"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path

from report_runs import report_run

from probe import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDE = (DOCS / "plugins.md").read_text()


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "probe_spec")]


def public_members(cls) -> list[str]:
    """A dataclass's public fields, properties and methods."""
    names = [field.name for field in dataclasses.fields(cls) if not field.name.startswith("_")]
    names += [name for name, member in inspect.getmembers(cls) if not name.startswith("_")
              and (isinstance(member, (property, functools.cached_property)) or inspect.isfunction(member))]
    return sorted(set(names))


def documented(name: str) -> bool:
    return f"`{name}`" in GUIDE


def test_every_hook_has_a_section():
    names = hook_names()
    assert len(names) >= 10
    missing = [name for name in names if f"### `{name}`" not in GUIDE]
    assert not missing, f"hooks without a section in docs/plugins.md: {missing}"


def test_every_member_of_what_a_reporter_gets_is_documented():
    """A reporter's ``run`` (RunData) and what it holds: each public member has its line in docs/plugins.md."""
    from probe.pipeline.context import Features, Rows, RunData, Services, Splits

    where = {RunData: "run", Services: "run.services", Rows: "run.rows", Splits: "run.splits", Features: "run.features"}
    missing = [f"{prefix}.{name}" for cls, prefix in where.items() for name in public_members(cls)
               if not documented(f"{prefix}.{name}")]
    assert not missing, f"members of a reporter's run not in docs/plugins.md: {missing}"


def test_every_results_key_is_documented(tmp_path_factory):
    results = json.loads((report_run(tmp_path_factory) / "results.json").read_text())
    row_keys = {key for row in results["layers"] for key in row}
    missing = [key for key in [*results, *row_keys] if not documented(key)]
    assert not missing, f"results.json keys not in docs/plugins.md: {missing}"


def test_every_dataset_column_is_documented():
    from probe.pipeline.data import COLUMNS

    assert not [c for c in COLUMNS if not documented(c)]
