"""A rerun with nothing to compute answers from the cache's index of finished runs (probe/pipeline/finished.py):
the same files and lines as the run it copies, without importing torch, transformers or scikit-learn; any
change to what the run read, or a damaged entry, is the normal path again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tiny_gpt2 import build_tiny_gpt2

import probe.pipeline.run
from probe.cli.main import cli
from probe.pipeline.config import load_config
from probe.pipeline.finished import finished_before, run_key
from probe.store.files import MARKER

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py; subprocesses get the same PROBE_PLUGINS

HEAVY = ("torch", "transformers", "sklearn", "datasets")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


@pytest.fixture
def experiment(tiny_model, tmp_path):
    """A config on a copy of the builtin mole rows as a file (so the test can change the data) and a copy of
    the tiny model (so it can change the weights)."""
    import shutil

    from probe.builtin.datasets import DATA

    data, model = tmp_path / "rows.jsonl", tmp_path / "model"
    shutil.copyfile(DATA / "mole.jsonl", data)
    shutil.copytree(tiny_model, model)
    config = {"name": "tiny", "model": str(model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
              "positions": ["target", "last"],  # as mole.yaml: parsing positions must not import the data stack
              "controls": ["majority", "shuffled"], "split_by": "cue", "device": "cpu",
              "reporters": ["json", "csv", "plots", "summary", "html"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": path, "data": data, "model": model, "out": tmp_path / "out", "cache": tmp_path / "cache"}


def probe_run(experiment, *extra):
    """``probe run`` in this process (its stdout and stderr apart)."""
    args = ["run", experiment["config"], "--output", experiment["out"], "--cache-dir", experiment["cache"], "--quiet"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, *extra]])
    assert result.exit_code == 0, result.output
    return result


def probe_run_apart(experiment) -> subprocess.CompletedProcess:
    """``probe run`` in a fresh process that prints, last, which of the heavy modules it imported."""
    code = ("import sys; from probe.cli.main import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            f"print(sorted(set({HEAVY!r}) & set(sys.modules)))")
    args = ["run", experiment["config"], "--output", experiment["out"], "--cache-dir", experiment["cache"], "--quiet"]
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PROBE_PLUGINS": ""})


def run_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def counting_runs(monkeypatch) -> list:
    calls, real = [], probe.pipeline.run.run_experiment
    monkeypatch.setattr(probe.pipeline.run, "run_experiment", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def kept(experiment) -> dict | None:
    config = load_config(experiment["config"])
    return finished_before(run_key(config, experiment["out"], None), experiment["cache"])


def test_a_rerun_gives_the_same_files_and_lines_and_imports_nothing_heavy(experiment):
    cold = probe_run(experiment)
    files = run_files(experiment["out"])
    assert {"results.json", "results.csv", "summary.md", "report.html"} <= set(files)
    again = probe_run_apart(experiment)
    assert again.returncode == 0, again.stderr
    *printed, heavy = again.stdout.splitlines()
    assert heavy == "[]"  # no torch, transformers, scikit-learn or datasets
    assert printed == cold.stdout.splitlines()
    assert again.stderr.splitlines() == cold.stderr.splitlines()
    assert run_files(experiment["out"]) == files  # byte for byte, results.json's timestamp included
    marker = json.loads((experiment["out"] / MARKER).read_text())
    assert "finished" in marker and "run" not in marker  # published now, computed by the run it copies


def test_a_changed_config_data_or_weights_misses_the_index_and_computes_again(experiment, monkeypatch):
    probe_run(experiment)
    assert kept(experiment) is not None
    calls = counting_runs(monkeypatch)
    probe_run(experiment, "--set", "seed=1")
    assert calls == [1]  # another config is another key
    with open(experiment["data"], "a", encoding="utf-8") as rows:
        rows.write(json.dumps({"text": "The mole dug a tunnel under the lawn.", "target": "mole",
                               "label": "animal", "cue": "right", "group": "extra"}) + "\n")
    assert kept(experiment) is None  # the data it read changed
    probe_run(experiment)
    assert calls == [1, 1] and json.loads((experiment["out"] / "results.json").read_text())["dataset"]["rows"] == 193
    assert kept(experiment) is not None  # rebuilt for the data as it is now
    weights = experiment["model"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert kept(experiment) is None  # other weights, even by one bit
    probe_run(experiment)
    assert calls == [1, 1, 1]
    (experiment["model"] / "extra.bin").write_bytes(b"one more file")
    assert kept(experiment) is None  # a model folder with another file is another model


def test_a_damaged_entry_is_named_removed_and_rebuilt(experiment, monkeypatch, caplog):
    probe_run(experiment)
    files = run_files(experiment["out"])
    entry = next((experiment["cache"] / "runs").iterdir())
    summary = entry / "summary.md"
    summary.write_text(summary.read_text() + "tampered\n")
    calls = counting_runs(monkeypatch)
    probe_run(experiment)
    assert calls == [1]
    assert f"cached run {entry} is not what its name says (summary.md differs from the digest" in caplog.text
    assert kept(experiment) is not None and (entry / "summary.md").read_bytes() == files["summary.md"]
    manifest = json.loads((entry / "entry.json").read_text())
    (entry / "entry.json").write_text(json.dumps({**manifest, "key": "0" * 24}))
    assert kept(experiment) is None and not entry.exists()
    assert "it was kept under another key" in caplog.text


def test_an_entry_that_changes_after_its_check_is_not_published(experiment, monkeypatch):
    from probe.store import finished

    probe_run(experiment)
    files = run_files(experiment["out"])
    real = finished.copy_finished

    def replaced_meanwhile(cache_dir, key, into, checked):
        entry = finished.entry_folder(cache_dir, key)
        (entry / "summary.md").write_text("kept by another run since\n")
        return real(cache_dir, key, into, checked)

    monkeypatch.setattr(finished, "copy_finished", replaced_meanwhile)
    calls = counting_runs(monkeypatch)
    probe_run(experiment)
    assert calls == [1]  # computed again, not copied
    assert (experiment["out"] / "summary.md").read_bytes() == files["summary.md"]


def test_a_run_whose_plugin_acts_outside_its_folder_is_not_kept(experiment, tmp_path):
    plugin = tmp_path / "tracker.py"
    plugin.write_text("from probe import hookimpl\n\n@hookimpl\ndef experiment_finished(config, results, output_dir):"
                      "\n    pass\n")
    probe_run(experiment, "--plugins-dir", tmp_path)
    assert not (experiment["cache"] / "runs").exists()  # a copy would skip the tracker


def test_a_device_other_than_the_cpu_is_never_answered_from_the_index(experiment):
    config = load_config(experiment["config"], {"device": "cuda"})
    assert run_key(config, experiment["out"], None) is None
    assert run_key(load_config(experiment["config"]), experiment["out"], None) is not None
