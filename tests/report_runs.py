"""Run folders for the report tests, built once per session even under several xdist workers: a tiny
random-init GPT-2 (causal) probed on mole's left/right-cue rows, split by cue, at the target and the
last token, with the html reporter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import shared_folder
from tiny_gpt2 import build_tiny_gpt2

from probe import plugins
from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment

CONFIG = {
    "name": "mole-cues", "dataset": "mole", "filter": {"cue": ["left", "right"]}, "split_by": "cue",
    "positions": ["target", "last"], "folds": 3, "controls": ["majority", "shuffled"],
    "reporters": ["json", "html"],
}




def _run(folder: Path) -> None:
    model = build_tiny_gpt2(folder / "model", n_layer=2, n_embd=32, n_head=4, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")  # only probe's built-ins
        plugins.reset_plugin_manager()
        try:
            run_experiment(validate({**CONFIG, "model": str(model)}), folder / "run",
                           cache_dir=folder / "cache", progress=False)
        finally:
            plugins.reset_plugin_manager()


def report_run(tmp_path_factory) -> Path:
    """The run folder (results.json, report_data.json, report.html); treat it as read-only."""
    return shared_folder(tmp_path_factory, "report-run-tiny-gpt2", _run) / "run"


def copy_run(tmp_path_factory, destination: Path) -> Path:
    """A private copy of the run folder, for tests that write into it."""
    return Path(shutil.copytree(report_run(tmp_path_factory), destination))
