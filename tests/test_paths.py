"""Paths and names from a config: a name is a label that becomes one safe folder name, a sweep file may
not send its output outside the folder probe runs in, and every path a run reads or writes is resolved and
shown before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from probe.cli.main import paths_line
from probe.pipeline.config import ConfigError, load_config
from probe.sweep.plan import load_sweep, plan_cells, validate_sweep


def _experiment(folder: Path, file: str, **fields) -> Path:
    path = folder / f"{file}.yaml"
    path.write_text(yaml.safe_dump({"model": "minilm-l6", "dataset": "mole", "name": file, **fields}))
    return path


@pytest.mark.parametrize("name", ["../../escape", "/abs/path", "..", "a/b"])
def test_a_sweep_cell_folder_is_the_experiments_name_made_safe(tmp_path, name):
    experiment = _experiment(tmp_path, "exp", name=name)
    out = tmp_path / "sweep-out"
    (cell,) = plan_cells(validate_sweep({"experiments": [str(experiment)], "output": str(out)}))
    assert cell.run_dir.is_relative_to(out.resolve()), cell.run_dir
    assert len(cell.run_dir.relative_to(out.resolve()).parts) == 3  # experiment / model / seed


@pytest.mark.parametrize("output", ["/tmp/elsewhere", "../outside", "runs/../../outside", "~/runs"])
def test_a_sweep_files_output_may_not_leave_the_current_folder(tmp_path, output):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"experiments": [str(_experiment(tmp_path, "exp"))], "output": output}))
    with pytest.raises(ConfigError, match=rf"sweep\.yaml: field 'output' is {output!r}; .*--output"):
        load_sweep(sweep)


def test_a_sweep_output_given_on_the_command_line_may_be_anywhere(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"experiments": [str(_experiment(tmp_path, "exp"))], "output": "runs/mine"}))
    assert load_sweep(sweep).output == "runs/mine"
    elsewhere = str(tmp_path.parent / "elsewhere")
    assert load_sweep(sweep, {"output": elsewhere}).output == elsewhere


def test_a_configs_relative_paths_are_resolved_against_its_folder_and_shown(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "rows.jsonl").write_text('{"text": "a mole", "target": "mole", "label": "animal"}\n')
    (folder / "plugin.py").write_text("")
    config = load_config(_experiment(folder, "exp", dataset={"name": "file", "path": "rows.jsonl"},
                                     plugins=["plugin.py"]))
    monkeypatch.chdir(tmp_path)  # the config's folder decides, not the current one
    assert config.dataset_options["path"] == str((folder / "rows.jsonl").resolve())
    assert config.plugins == [str((folder / "plugin.py").resolve())]
    line = paths_line(config, Path("runs/exp"), ".probe-cache")
    assert line == (f"exp: reads data {folder.resolve() / 'rows.jsonl'}, plugin {folder.resolve() / 'plugin.py'}; "
                    f"writes {tmp_path / 'runs' / 'exp'}/ (cache {tmp_path / '.probe-cache'}/)")


def test_a_registered_dataset_is_shown_by_name(tmp_path):
    config = load_config(_experiment(tmp_path, "exp"))
    assert paths_line(config, tmp_path / "out", tmp_path / "cache").startswith("exp: reads dataset mole; writes ")


def test_every_relative_path_in_a_config_is_relative_to_its_folder_even_when_missing(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "ckpt").mkdir(parents=True)
    config = load_config(_experiment(folder, "exp", model="./ckpt", dataset={"name": "file", "path": "later.jsonl"},
                                     plugins=["p.py"]))
    monkeypatch.chdir(tmp_path)
    assert config.model == str((folder / "ckpt").resolve())
    assert config.dataset_options["path"] == str((folder / "later.jsonl").resolve())  # missing: said there
    assert config.plugins == [str((folder / "p.py").resolve())]
    plain = load_config(_experiment(folder, "named", model="minilm-l6", dataset={"name": "file", "path": "hf:a/b"}))
    assert plain.model == "minilm-l6" and plain.dataset_options["path"] == "hf:a/b"  # names, not paths


def test_paths_given_on_the_command_line_stay_relative_to_the_current_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(_experiment(folder, "exp"), {"plugins": ["mine.py"], "model": "./here",
                                                       "dataset": {"name": "file", "path": "rows.jsonl"}})
    assert config.plugins == ["mine.py"] and config.model == "./here"
    assert config.dataset_options["path"] == "rows.jsonl"


def test_a_sweep_files_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "sweeps"
    (folder / "ckpt").mkdir(parents=True)
    _experiment(folder, "exp")
    sweep = folder / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"experiments": ["exp.yaml"], "models": ["./ckpt", "minilm-l6"],
                                     "set": {"plugins": ["p.py"]}}))
    monkeypatch.chdir(tmp_path)
    loaded = load_sweep(sweep)
    assert loaded.experiments == [str((folder / "exp.yaml").resolve())]
    assert loaded.models == [str((folder / "ckpt").resolve()), "minilm-l6"]
    assert loaded.overrides == {"plugins": [str((folder / "p.py").resolve())]}
