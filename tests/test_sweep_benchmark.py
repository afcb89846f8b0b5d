"""`probe sweep` over a benchmark folder's words and over probes, and each cell's progress lines while it
runs; on a small synthetic CoarseWSD-20 folder and a tiny random GPT-2."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from test_coarsewsd import write_folder
from tiny_gpt2 import build_tiny_gpt2

from probe.pipeline.config import ConfigError
from probe.sweep.plan import plan_cells, validate_sweep
from probe.sweep.run import CellSettings, ProgressLines, run_cell

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture()
def experiment(tmp_path) -> Path:
    folder = write_folder(tmp_path / "CoarseWSD-20", {"train": 12, "test": 6})
    model = build_tiny_gpt2(tmp_path / "model", n_layer=2, n_embd=16, n_head=2, seed=1)
    config = {"model": str(model), "dataset": {"name": "coarsewsd", "path": str(folder)}, "controls": ["majority"],
              "evaluation": {"split_field": "split", "train": "train", "test": "test"}, "reporters": ["json"]}
    path = tmp_path / "wsd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep(experiment: Path, **fields):
    return validate_sweep({"experiments": [str(experiment)], "output": str(experiment.parent / "out"), **fields},
                          source="sweep.yaml")


def test_a_sweep_over_words_and_probes_has_a_cell_for_each_pair(experiment):
    cells = plan_cells(sweep(experiment, words="all", probes=["logreg", {"name": "logreg", "C": 1.0}]))
    assert [cell.experiment for cell in cells] == ["mole.logreg", "mole.logreg-C1.0", "tower.logreg",
                                                    "tower.logreg-C1.0"]
    assert [cell.config.dataset_options["words"] for cell in cells] == [["mole"], ["mole"], ["tower"], ["tower"]]
    assert [cell.config.probe.as_written() for cell in cells][:2] == ["logreg", {"name": "logreg", "C": 1.0}]
    assert len({cell.run_dir for cell in cells}) == 4
    [only] = plan_cells(sweep(experiment, words=["tower"]))
    assert only.experiment == "tower" and only.config.dataset_options["words"] == ["tower"]


@pytest.mark.parametrize("fields, message", [
    ({"words": ["bank"]}, r"field 'words': 'bank' not in .*CoarseWSD-20 \(words there: mole, tower\)"),
    ({"words": "every"}, r"field 'words' is 'every'; write all, or a list"),
    ({"probes": [{"C": 1}]}, r"field 'probes', entry 1: a mapping needs a 'name'"),
    ({"words": "all", "datasets": "words/"}, r"fields 'datasets' .* and 'words' .* give one"),
])
def test_sweep_word_and_probe_errors_name_the_field(experiment, fields, message):
    with pytest.raises(ConfigError, match=message):
        plan_cells(sweep(experiment, **fields))


def test_words_need_a_benchmark_folder(experiment):
    config = yaml.safe_load(experiment.read_text())
    experiment.write_text(yaml.safe_dump({**config, "dataset": "mole", "evaluation": {}}))
    with pytest.raises(ConfigError, match=r"dataset must be coarsewsd with a path; .*wsd.yaml has 'mole'"):
        plan_cells(sweep(experiment, words="all"))


def test_a_running_cell_prints_its_name_phase_and_rows_done(experiment, tmp_path, capsys):
    cell = plan_cells(sweep(experiment, words=["mole"]))[0]
    outcome = run_cell(cell, CellSettings(cache_dir=tmp_path / "cache", progress_every=0.0))
    assert outcome.status == "ran", outcome.error
    lines = capsys.readouterr().err.splitlines()
    name = f"[{cell.name}]"
    assert f"{name} reimplemented: 18/18 rows" in lines and f"{name} probes: 0/13 fits" in lines, lines
    assert lines.index(f"{name} reimplemented: 18/18 rows") < lines.index(f"{name} probes: 13/13 fits")
    assert all(line.startswith(name) for line in lines), lines


def test_progress_lines_come_at_most_once_a_phase_per_interval_and_at_its_end():
    clock = iter([0.0, 1.0, 5.0, 5.5, 6.0, 20.0])
    out = io.StringIO()
    lines = ProgressLines("w/m/seed0", out, every=4.0, now=lambda: next(clock))
    for done in (1, 2, 3):
        lines.write(f"\rw: reimplemented:  {done * 10}%|##  | {done}/10 [00:01<00:09, 1.0row/s]")
    lines.write("\rw: reimplemented: 100%|####| 10/10 [00:10<00:00, 1.0row/s]\n")
    lines.write("a warning from somewhere\n")
    assert out.getvalue().splitlines() == ["[w/m/seed0] reimplemented: 1/10 rows", "[w/m/seed0] reimplemented: 3/10 rows",
                                           "[w/m/seed0] reimplemented: 10/10 rows", "a warning from somewhere"]
