"""`probe sweep`: cells over words × models × seeds, one table and plot, skip on rerun, Ray and MLflow.

Every cell runs a tiny random GPT-2 on 24 rows per word with two folds, so a cell takes about a second;
what costs is starting the worker processes (and Ray), so each backend is started once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import shared_folder
from tiny_gpt2 import DATA, build_tiny_gpt2

from probe.cli import cli
from probe.pipeline.config import ConfigError
from probe.pipeline.results import load_results, without_provenance
from probe.pipeline.run import run_experiment
from probe.sweep.plan import (
    CELL_FILE,
    is_finished,
    load_sweep,
    plan_cells,
    validate_sweep,
)
from probe.sweep.run import CellSettings, run_cell, run_cells

ROWS_PER_SENSE = 6


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> list[str]:
    folder = shared_folder(tmp_path_factory, "sweep-tiny-gpt2s", lambda f: [
        build_tiny_gpt2(f / f"gpt2-s{seed}", n_layer=2, n_embd=16, n_head=2, seed=seed) for seed in (1, 2)])
    return [str(folder / "gpt2-s1"), str(folder / "gpt2-s2")]


def write_words(folder: Path, words=("mole", "tower")) -> Path:
    """A folder with one JSONL file per word: the first rows of each sense of the built-in data."""
    folder.mkdir(parents=True, exist_ok=True)
    for word in words:
        rows, seen = [], {}
        for line in (DATA / f"{word}.jsonl").read_text().splitlines():
            row = json.loads(line)
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            if seen[row["label"]] <= ROWS_PER_SENSE:
                rows.append(line)
        (folder / f"{word}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def write_experiment(path: Path, model: str) -> Path:
    config = {"model": model, "dataset": "mole", "folds": 2, "controls": ["majority", "shuffled"],
              "reporters": ["json", "csv"], "batch_size": 8}
    path.write_text(yaml.safe_dump(config))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------- the sweep file


def test_sweep_file_errors_name_the_field(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("experiments: [a.yaml]\nseed: [1]\n")
    with pytest.raises(ConfigError, match=r"unknown field 'seed'\. Did you mean 'seeds'\?"):
        load_sweep(path)
    with pytest.raises(ConfigError, match=r"field 'seeds\.1': .*integer.*got 'two'"):
        validate_sweep({"experiments": ["a.yaml"], "seeds": [1, "two"]})
    with pytest.raises(ConfigError, match=r"field 'experiments': .*at least 1"):
        validate_sweep({"experiments": []})
    with pytest.raises(ConfigError, match=r"field 'datasets' runs one experiment .* lists 2"):
        validate_sweep({"experiments": ["a.yaml", "b.yaml"], "datasets": "words"})
    with pytest.raises(ConfigError, match=r"sweep\.yaml: field 'experiments': .*a\.yaml does not exist"):
        plan_cells(validate_sweep({"experiments": ["a.yaml"]}, source=str(path)))
    path.write_bytes("name: x\nexperiments: [caf\u00e9.yaml]\n".encode("latin-1"))  # read as configs are
    with pytest.raises(ConfigError, match=r"sweep\.yaml, line 2: byte 0xe9 is not UTF-8"):
        load_sweep(path)


def test_cells_are_planned_and_their_configs_checked_before_any_run(tmp_path, tiny_models):
    words = write_words(tmp_path / "words")
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    sweep = validate_sweep({"experiments": [str(experiment)], "datasets": str(words), "models": tiny_models,
                            "seeds": [0, 3], "output": str(tmp_path / "out")})
    cells = plan_cells(sweep)
    assert len(cells) == 2 * 2 * 2
    assert {(c.experiment, c.model, c.seed) for c in cells} == {
        (w, m, s) for w in ("mole", "tower") for m in tiny_models for s in (0, 3)}
    for cell in cells:
        assert cell.config.dataset.as_written() == {"name": "file", "path": str(words / f"{cell.experiment}.jsonl")}
        assert cell.config.seed == cell.seed and cell.config.model == cell.model
    assert len({cell.run_dir for cell in cells}) == len(cells)
    bad = validate_sweep({"experiments": [str(experiment)], "set": {"folds": 1}})
    with pytest.raises(ConfigError, match="field 'folds' must be at least 2"):
        plan_cells(bad)


# ---------------------------------------------------------------- local processes, skip on rerun, MLflow


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    # MLflow 3 keeps the folder store in maintenance mode and refuses it unless told (workers inherit this).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return tmp_path / "mlruns"


def test_sweep_over_a_folder_of_words_writes_one_table_and_skips_finished_cells(
        tmp_path, tiny_models, builtins_only, mlflow_store):
    words = write_words(tmp_path / "words", ["mole"])
    (words / "broken.jsonl").write_text('{"text": "no label here", "target": "label"}\n')
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    out = tmp_path / "out"
    args = ("sweep", experiment, "--datasets", words, "--model", tiny_models[0], "--model", tiny_models[1],
            "--output", out, "--cache-dir", tmp_path / "cache", "--jobs", 2, "--mlflow", mlflow_store)
    result = invoke(*args)

    # The broken word fails in both models with a message naming its file; the other two cells ran.
    assert result.exit_code == 1
    assert "Error: 2 of 4 cells failed: broken/" in result.output
    assert result.output.count(" ran ") == 2 and result.output.count(" failed broken/") == 2
    assert "broken.jsonl" in result.output
    cells = [c for c in plan_cells(load_sweep_from(experiment, words, tiny_models, out)) if c.experiment != "broken"]
    check_tables(out, cells)
    check_mlflow(mlflow_store, cells)

    # Rerun: finished cells are skipped (not rewritten); a cell whose results.json is cut short runs again.
    redo = cells[1]
    (redo.run_dir / "results.json").write_text((redo.run_dir / "results.json").read_text()[:200])
    before = {c.name: (c.run_dir / "results.json").stat().st_mtime_ns for c in cells if c is not redo}
    again = invoke(*args[:-2])  # no tracking this time
    assert again.output.count(" skipped ") == 1 and f"ran {redo.name}" in again.output
    assert {c.name: (c.run_dir / "results.json").stat().st_mtime_ns for c in cells if c is not redo} == before
    assert load_results(redo.run_dir).experiment == redo.experiment


def test_a_sweep_ends_with_its_last_cell(tmp_path, tiny_models):
    """Cells whose probe fits ran on joblib's workers (two threads a cell) leave none behind: joblib keeps
    its workers 300 s for reuse, and the cell's process, waiting for them as it ended, held the sweep that
    long (run in a child process: without the fix it outlives the timeout); nor folders for its tracker."""
    import subprocess
    import sys

    words = write_words(tmp_path / "words", ["mole"])
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    script = f"""
from probe.sweep.plan import plan_cells, validate_sweep
from probe.sweep.run import CellSettings, run_cells
sweep = validate_sweep({{"experiments": [{str(experiment)!r}], "datasets": {str(words)!r},
                        "models": [{tiny_models[0]!r}], "seeds": [0, 1], "output": {str(tmp_path / "out")!r}}})
outcomes = list(run_cells(plan_cells(sweep), CellSettings(cache_dir={str(tmp_path / "cache")!r}, threads=2), jobs=1))
assert [outcome.status for outcome in outcomes] == ["ran", "ran"], outcomes
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the sweep was still running 150 s after starting: its cells' processes waited for idle "
                    "joblib workers")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaked" not in done.stderr  # joblib's folders for sharing arrays removed, not left to its tracker


def test_an_unusable_tracking_uri_fails_before_any_cell_runs(tmp_path, tiny_models):
    pytest.importorskip("mlflow")
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    result = invoke("sweep", experiment, "--output", tmp_path / "out", "--mlflow", "bogus://nowhere")
    assert result.exit_code == 1
    assert "Error: MLflow tracking URI 'bogus://nowhere': " in result.output and "Traceback" not in result.output
    assert not list(tmp_path.glob("out/**/results.json"))


def load_sweep_from(experiment, words, models, out):
    return validate_sweep({"experiments": [str(experiment)], "datasets": str(words), "models": models,
                           "output": str(out)})


def check_tables(out: Path, cells) -> None:
    layers, best = pd.read_csv(out / "layers.csv"), pd.read_csv(out / "best.csv")
    assert pd.read_json(out / "layers.json").shape == layers.shape
    assert len(layers) == len(cells) * 3  # hidden states 0, 1, 2 of each cell's tiny model
    assert len(best) == len(cells)
    for cell in cells:
        results = load_results(cell.run_dir)
        assert (results.experiment, results.model.name, results.settings["seed"]) == (
            cell.experiment, cell.model, cell.seed)
        mine = layers[(layers.experiment == cell.experiment) & (layers.model == cell.model)]
        assert list(mine.layer) == [row.layer for row in results.rows]
        assert list(mine.accuracy) == pytest.approx([row.accuracy for row in results.rows], abs=1e-12)
        top = best[(best.experiment == cell.experiment) & (best.model == cell.model)].iloc[0]
        assert top.accuracy == pytest.approx(max(row.accuracy for row in results.rows), abs=1e-12)
        assert top.majority_accuracy == pytest.approx(results.baseline("majority").accuracy, abs=1e-12)
        assert json.loads((cell.run_dir / CELL_FILE).read_text())["cell"] == cell.name
    assert (out / "best-layers.png").read_bytes().startswith(b"\x89PNG")
    page = (out / "sweep.html").read_text()
    assert page.count("<tr>") == len(cells) + 1 and "data:image/png;base64," in page


def check_mlflow(store: Path, cells) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(store))
    experiment = client.get_experiment_by_name("exp")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == sorted(cell.name for cell in cells)
    for run in runs:
        cell = next(c for c in cells if c.name == run.info.run_name)
        results = load_results(cell.run_dir)
        assert run.data.params["model"] == cell.model and run.data.params["seed"] == str(cell.seed)
        history = client.get_metric_history(run.info.run_id, "target/all/accuracy")
        assert sorted((m.step, m.value) for m in history) == [(r.layer, r.accuracy) for r in results.rows]
        assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"results.json", "results.csv"}
        assert run.data.tags.get("probe.git_commit") == results.provenance.git_commit


def test_a_cell_with_a_changed_config_is_not_finished(tmp_path, tiny_models, builtins_only):
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    sweep = {"experiments": [str(experiment)], "output": str(tmp_path / "out")}
    (cell,) = plan_cells(validate_sweep(sweep))
    assert not is_finished(cell)
    assert run_cell(cell, CellSettings(cache_dir=tmp_path / "cache")).status == "ran"
    assert is_finished(cell)
    assert run_cell(cell, CellSettings(cache_dir=tmp_path / "cache")).status == "skipped"
    (changed,) = plan_cells(validate_sweep({**sweep, "set": {"folds": 3}}))
    assert changed.run_dir == cell.run_dir and not is_finished(changed)


def test_a_failed_cells_traceback_comes_with_debug(tmp_path, tiny_models, builtins_only, monkeypatch):
    words = write_words(tmp_path / "words", [])
    (words / "broken.jsonl").write_text('{"text": "no label here", "target": "label"}\n')
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    (cell,) = plan_cells(load_sweep_from(experiment, words, tiny_models[:1], tmp_path / "out"))
    plain = run_cell(cell, CellSettings(cache_dir=tmp_path / "cache"))
    monkeypatch.setenv("PROBE_DEBUG", "1")
    debug = run_cell(cell, CellSettings(cache_dir=tmp_path / "cache"))
    assert plain.status == debug.status == "failed" and "broken.jsonl" in plain.error
    assert "Traceback" not in plain.error and "Traceback (most recent call last)" in debug.error


# ---------------------------------------------------------------- Ray


@pytest.fixture
def local_ray():
    """A local Ray instance for one test: two CPUs, no dashboard, built-in plugins only; always shut down."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.timeout(300)  # Ray's start-up included: a hung start fails the test instead of the suite
def test_ray_runs_the_cells_with_the_same_results_as_a_local_run(tmp_path, tiny_models, builtins_only, local_ray):
    words = write_words(tmp_path / "words", ["mole", "tower"])
    experiment = write_experiment(tmp_path / "exp.yaml", tiny_models[0])
    cells = plan_cells(load_sweep_from(experiment, words, tiny_models[:1], tmp_path / "out"))
    outcomes = run_cells(cells, CellSettings(cache_dir=tmp_path / "cache"), ray_address="local")
    assert [(o.cell, o.status) for o in outcomes] == [(c.name, "ran") for c in cells], outcomes
    assert local_ray.is_initialized()  # an instance the caller started is left running
    for cell in cells:
        here = run_experiment(cell.config, tmp_path / "here" / cell.experiment, cache_dir=tmp_path / "cache-here",
                              progress=False)
        assert without_provenance(load_results(cell.run_dir).to_dict()) == without_provenance(here.to_dict())


def test_the_shipped_sweep_plans_three_words_on_both_offline_models():
    root = Path(__file__).resolve().parent.parent
    cells = plan_cells(load_sweep(root / "experiments" / "sweeps" / "senses.yaml"))
    assert sorted((c.experiment, c.model) for c in cells) == sorted(
        (word, model) for word in ("mole", "tower", "tower-size") for model in ("minilm-l6", "smollm2-135m"))
    assert {c.run_dir.relative_to(Path("runs/senses").resolve()).parts[0] for c in cells} == {
        "mole", "tower", "tower-size"}
