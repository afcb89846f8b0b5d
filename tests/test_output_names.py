"""A config's name is a label, never a path: with no --output, every run and sweep writes under runs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.store.files import default_output, folder_name


@pytest.mark.parametrize("label, expected", [
    ("mole", "mole"),
    ("mole-cues.v2", "mole-cues.v2"),
    ("../../../x", "x"),
    ("/abs/path", "abs-path"),
    ("runs/../../etc", "runs-etc"),
    ("a b\tc", "a-b-c"),
    ("..", "experiment"),
    ("", "experiment"),
    ("~/.ssh", "ssh"),
])
def test_a_name_becomes_one_folder_name(label, expected):
    assert folder_name(label) == expected


def test_the_default_output_stays_under_runs_whatever_the_name():
    for label in ["../../../x", "/abs/path", "..", "a/../../b", "C:\\windows", "x" * 500]:
        folder = default_output(label)
        assert folder.parent == Path("runs") and len(folder.parts) == 2
        assert folder.name not in ("", ".", "..") and len(folder.name) <= 100
        assert (Path("/base") / folder).resolve().is_relative_to(Path("/base/runs"))


def test_a_sweep_cells_model_folder_is_one_safe_name():
    from probe.sweep.plan import _folder_name

    assert _folder_name("gpt2") == "gpt2" and _folder_name("mole-v2.1") == "mole-v2.1"
    for model in ["..", ".", "/models/../x", "a b"]:
        name = _folder_name(model)
        assert name not in (".", "..") and "/" not in name and name != model
