"""Regression probes (task: regression): ridge against plain scikit-learn, R² / Spearman and their intervals
against hand computations, numeric labels from files, config errors, controls, figures, and a tiny run
end to end (with `probe compare` refusing regression runs)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import shared_folder
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tiny_gpt2 import build_tiny_gpt2

from probe.cli import cli
from probe.pipeline.config import ConfigError, validate
from probe.pipeline.data import DataError, load_rows, prepare
from probe.pipeline.results import REGRESSION_COLUMNS, Results
from probe.pipeline.run import run_experiment
from probe.science import intervals
from probe.science.probes import FitTask, evaluate, folds
from probe.science.regression import bootstrap_intervals, r2, ridge_probe, score, spearman

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

FILLER = "about across after air all and been built can card desk every from had hand has her his into its".split()
CUE_NUMBERS = {"land": 1.0, "chemist": 2.5, "desk": 4.0, "light": 0.5, "hand": 3.0}  # the word left of "mole"


# ---------------------------------------------------------------- the science, on arrays


def test_ridge_per_fold_equals_plain_scikit_learn_ridge_on_the_same_folds():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8))
    y = X @ rng.normal(size=8) + rng.normal(scale=0.5, size=60)
    fold_list = folds(y, None, 5, seed=3, splitter="KFold")
    for scale in (False, True):
        found = evaluate([FitTask("one", X, y, fold_list)], lambda scale=scale: ridge_probe(alpha=2.0, scale=scale),
                         n_jobs=1, scorer=score)["one"]
        expected = np.empty(len(y))
        for train, test in KFold(5, shuffle=True, random_state=3).split(X):
            plain = make_pipeline(StandardScaler(), Ridge(alpha=2.0)) if scale else Ridge(alpha=2.0)
            expected[test] = plain.fit(X[train], y[train]).predict(X[test])
        np.testing.assert_allclose(found["predictions"], expected, rtol=1e-10, atol=1e-12)
        assert found["r2"] == pytest.approx(r2_score(y, expected), abs=1e-12)
        assert found["spearman"] == pytest.approx(spearmanr(y, expected).statistic, abs=1e-12)
        assert len(found["fold_r2s"]) == 5


def test_r2_and_spearman_against_hand_computations():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    predicted = np.array([1.5, 1.0, 3.5, 4.0, 6.0])
    residual = sum((a - b) ** 2 for a, b in zip(y, predicted))  # 0.25 + 1 + 0.25 + 0 + 1 = 2.5
    total = sum((a - 3.0) ** 2 for a in y)  # 10
    assert r2(y, predicted) == pytest.approx(1 - residual / total) == pytest.approx(0.75)
    # ranks of predicted: 2, 1, 3, 4, 5; d² = 1 + 1 + 0 + 0 + 0 = 2; rho = 1 − 6·2 / (5·24) = 0.9
    assert spearman(y, predicted) == pytest.approx(0.9)
    assert np.isnan(r2(np.ones(4), np.arange(4.0)))  # undefined, not a crash
    assert np.isnan(spearman(np.arange(4.0), np.ones(4)))


@pytest.mark.parametrize("grouped", [False, True])
def test_bootstrap_intervals_equal_resampling_the_rows_by_hand(grouped):
    rng = np.random.default_rng(1)
    y = rng.normal(size=30)
    predicted = np.round(y + rng.normal(scale=0.7, size=30), 1)  # rounding makes ties, which ranks average
    groups = [i // 3 for i in range(30)] if grouped else None
    found = bootstrap_intervals(y, predicted, groups, resamples=300, seed=5)
    ids = intervals.group_ids(groups, 30)
    draws = intervals.resampled_groups(ids, 300, 5)
    r2s, rhos = [], []
    for counts in draws:
        rows = np.repeat(np.arange(30), counts[ids])  # each row as often as its group was drawn
        r2s.append(r2_score(y[rows], predicted[rows]))
        rhos.append(spearmanr(y[rows], predicted[rows]).statistic)
    assert found["r2"] == pytest.approx(list(np.quantile(r2s, [0.025, 0.975])), abs=1e-10)
    assert found["spearman"] == pytest.approx(list(np.quantile(rhos, [0.025, 0.975])), abs=1e-10)


# ---------------------------------------------------------------- numeric labels from files


def test_numeric_labels_load_from_jsonl_and_csv_without_losing_precision(tmp_path):
    numbers = [0.1, 1 / 3, 2.718281828459045, -1e-12, 123456.789012345]
    (tmp_path / "rows.jsonl").write_text("".join(
        json.dumps({"text": f"The tower number {i}.", "target": "tower", "label": n}) + "\n"
        for i, n in enumerate(numbers)))
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "target", "label"])
        writer.writerows([f"The tower number {i}.", "tower", repr(n)] for i, n in enumerate(numbers))
    for name in ("rows.jsonl", "rows.csv"):
        rows, _ = prepare(load_rows(tmp_path / name), source=name, n_folds=2, numeric=True)
        assert [float(label) for label in rows["label"]] == numbers  # exactly, not approximately


def test_a_label_that_is_not_a_number_is_named_by_its_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"The tower {i}.", "target": "tower", "label": label}) + "\n"
                            for i, label in enumerate([1.5, 2.0, "tall", 3.25])))
    with pytest.raises(DataError) as error:
        prepare(load_rows(path), source="rows.jsonl", n_folds=2, numeric=True)
    message = str(error.value)
    assert "row 3" in message and "'tall' is not a number" in message


# ---------------------------------------------------------------- a tiny run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = shared_folder(tmp_path_factory, "tiny-gpt2-n2-d32-s1",
                           lambda f: build_tiny_gpt2(f / "model", n_layer=2, n_embd=32, seed=1))
    return folder / "model"


def write_numbers(path: Path, n_per_cue: int = 24, label=lambda number, i: number) -> Path:
    """"Then <filler> the <cue> mole <filler>." with the cue word's number (plus a little noise) as label."""
    rng = random.Random(0)
    rows = []
    for i in range(n_per_cue):
        for word, number in CUE_NUMBERS.items():
            rows.append({"text": f"Then {rng.choice(FILLER)} the {word} mole {rng.choice(FILLER)}.", "target": "mole",
                         "label": label(round(number + rng.random() / 100, 6), i)})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def regression_config(model: Path, data: Path, **fields):
    raw = {"model": str(model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
           "probe": {"name": "ridge", "alpha": 1.0}, "reporters": ["json"]}
    return validate({**raw, **fields})


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression-run")
    data = write_numbers(folder / "numbers.jsonl")
    config = regression_config(tiny_model, data, reporters=["json", "csv", "plots", "summary", "html"],
                               options={"plots": {"formats": ["svg"]}})
    results = run_experiment(config, folder / "run", cache_dir=folder / "cache", progress=False)
    return results, folder / "run"


def test_a_tiny_regression_run_end_to_end(finished):
    results, run = finished
    written = json.loads((run / "results.json").read_text())
    assert written["task"] == "regression"
    assert written["settings"]["controls"] == ["mean", "shuffled", "random_weights"]  # the default, for numbers
    assert written["evaluation"]["splitter"] == "KFold"
    for row in written["layers"]:  # typed regression fields; no accuracy field filled with them
        assert {"r2", "r2_ci", "spearman", "spearman_ci", "shuffled_r2", "random_weights_r2"} <= set(row)
        assert not {"accuracy", "accuracy_ci", "confusion", "per_sense_recall", "correct"} & set(row)
        assert row["r2_ci"][0] <= row["r2"] <= row["r2_ci"][1]
    assert Results.from_dict(written).to_dict()["layers"] == written["layers"]
    with open(run / "results.csv") as handle:
        assert next(csv.reader(handle)) == list(REGRESSION_COLUMNS)
    assert list(results.layers.columns) == list(REGRESSION_COLUMNS)
    best = written["best_layer"][0]
    assert best["layer"] in (1, 2) and best["r2_ci"][0] <= best["r2"] <= best["r2_ci"][1]
    assert written["statistics"]["paired"] == [] and "McNemar" in written["statistics"]["not_applicable"]
    summary = (run / "summary.md").read_text()
    assert "Spearman" in summary and "mean baseline" in summary and "label-not-trained" not in summary


def test_the_probe_finds_the_planted_numbers_and_the_controls_do_not(finished):
    results, _ = finished
    best = max(results.rows, key=lambda row: row.r2)
    assert best.r2 > 0.5 and best.r2_ci[0] > best.shuffled_r2
    assert best.shuffled_r2 < 0.1 and abs(best.shuffled_spearman) < 0.3
    mean = results.baseline("mean")
    assert mean is not None and mean.r2 < 0.05 and mean.accuracy is None
    assert results.baseline("majority") is None


def test_scatter_and_curves_are_written_and_on_the_page(finished):
    _, run = finished
    for name in ("scatter.png", "regression.png", "scatter.svg", "regression.svg"):
        assert (run / name).stat().st_size > 1000, name
    assert (run / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "report.html").read_text()
    assert "Predicted vs true at the best layer" in page and "R² and Spearman per layer" in page


def test_probe_compare_refuses_regression_runs_with_a_reason(finished):
    _, run = finished
    answer = CliRunner().invoke(cli, ["compare", str(run), str(run)], env={"PROBE_PLUGINS": ""})
    assert answer.exit_code != 0
    assert "regression run" in answer.output and "r2_ci" in answer.output and "Traceback" not in answer.output


# ---------------------------------------------------------------- config errors


def run_error(tmp_path, config) -> str:
    with pytest.raises((ConfigError, DataError)) as error:
        run_experiment(config, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    return str(error.value)


def test_regression_with_a_classification_probe_says_to_write_ridge(tiny_model, tmp_path):
    data = write_numbers(tmp_path / "numbers.jsonl", n_per_cue=4)
    message = run_error(tmp_path, regression_config(tiny_model, data, task="regression", probe="logreg"))
    assert "field 'task'" in message and "probe: {name: ridge, alpha: 1.0}" in message


def test_fractional_numbers_with_a_classification_probe_say_to_write_ridge(tiny_model, tmp_path):
    data = write_numbers(tmp_path / "numbers.jsonl", n_per_cue=4)
    message = run_error(tmp_path, regression_config(tiny_model, data, probe="logreg"))
    assert "labels are numbers (row 1" in message and "probe: {name: ridge, alpha: 1.0}" in message


def test_a_regressor_given_text_labels_says_what_to_write(tiny_model, tmp_path):
    data = write_numbers(tmp_path / "words.jsonl", n_per_cue=4, label=lambda number, i: f"size {number}")
    message = run_error(tmp_path, regression_config(tiny_model, data))
    assert "predicts numbers, but the labels are text (row 1" in message and "probe: logreg" in message


@pytest.mark.parametrize(("fields", "said"), [
    ({"controls": ["majority"]}, "write mean"),
    ({"controls": ["permutation"]}, "not implemented for regression"),
    ({"evaluation": {"cv": "StratifiedKFold"}}, "cv: KFold"),
    ({"task": "classification"}, "task: regression"),
])
def test_settings_a_regression_run_cannot_use_are_named(tiny_model, tmp_path, fields, said):
    data = write_numbers(tmp_path / "numbers.jsonl", n_per_cue=4)
    assert said in run_error(tmp_path, regression_config(tiny_model, data, **fields))


def test_the_mean_control_is_refused_for_classes(tiny_model, tmp_path):
    data = write_numbers(tmp_path / "words.jsonl", n_per_cue=4, label=lambda number, i: f"size {number}")
    message = run_error(tmp_path, regression_config(tiny_model, data, probe="logreg", controls=["mean"]))
    assert "field 'controls' names mean" in message and "majority" in message


def test_grouped_rows_get_group_folds():
    y = np.arange(12, dtype=float)
    groups = [i // 2 for i in range(12)]
    found = folds(y, groups, 3, seed=0, splitter="GroupKFold")
    for train, test in found:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    expected = list(GroupKFold(3, shuffle=True, random_state=0).split(y, y, groups))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(found, expected))


def test_two_regression_runs_share_a_page_and_a_mix_with_classes_is_refused(finished, tmp_path):
    from probe.report.html import ReportError, render_report

    results, run = finished
    page = render_report(run, run)
    assert "probe R² by relative depth" in page.replace("\\u00b2", "²")  # JSON in the page escapes "²"
    classes = json.loads((run / "results.json").read_text()) | {"task": "classification"}
    with pytest.raises(ReportError, match="mix classification"):
        render_report(run, classes)


def test_the_notebook_plot_of_a_regression_run_draws_r2_and_spearman(finished):
    import probe

    figure = probe.plot(finished[0])
    assert [ax.get_ylabel() for ax in figure.axes] == ["cross-validated R²", "cross-validated Spearman ρ"]


def test_regression_scores_do_not_depend_on_the_number_of_jobs():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(40, 6)), rng.normal(size=40)
    fold_list = folds(y, None, 4, seed=0, splitter="KFold")
    tasks = [FitTask(("one", n), X[:, : n + 2], y, fold_list) for n in range(3)]
    alone = evaluate(tasks, ridge_probe, n_jobs=1, scorer=score)
    pooled = evaluate(tasks, ridge_probe, n_jobs=2, scorer=score)
    assert alone == pooled


def test_the_nested_choice_takes_the_layer_with_the_best_inner_r2_per_outer_fold():
    from types import SimpleNamespace

    from probe.pipeline.regression import nested_best
    from probe.pipeline.results import LayerResult

    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    split = SimpleNamespace(name="all", index=np.arange(6), folds=[(np.array([3, 4, 5]), np.array([0, 1, 2])),
                                                                   (np.array([0, 1, 2]), np.array([3, 4, 5]))])
    predicted = {0: [0.5, 1.5, 1.0, 3.0, 4.0, 5.0], 1: [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]}
    series = [LayerResult(layer=layer, position="target", subset="all", r2=0.0, predictions=values)
              for layer, values in predicted.items()]
    inner = {(0, 0): 0.2, (1, 0): 0.9, (0, 1): 0.8, (1, 1): 0.1}  # (layer, outer fold) → inner R²
    scores = {("all", "target", layer, "inner", outer): {"r2": value} for (layer, outer), value in inner.items()}
    best = nested_best(series, split, scores, y, None, seed=0)
    assert best["per_outer_fold"] == [1, 0]
    chosen = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # layer 1 on rows 0–2, layer 0 on rows 3–5: exact
    assert best["r2"] == pytest.approx(r2_score(y, chosen)) == 1.0


def test_a_sweep_over_a_regression_experiment_is_refused_before_any_work(tmp_path):
    from probe.sweep.plan import load_sweep, plan_cells

    root = Path(__file__).resolve().parent.parent
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"experiments: [{root / 'experiments' / 'tower-height-regression.yaml'}]\n"
                     "models: [minilm-l6]\n")
    with pytest.raises(ConfigError, match="regression experiment .* run it with probe run"):
        plan_cells(load_sweep(sweep))


def test_the_regression_page_draws_in_a_browser_without_errors(finished):
    from probe.report.browser import open_page

    _, run = finished
    with open_page(run / "report.html") as (page, log):
        points = page.eval_on_selector_all("[data-view=accuracy] .scatterlayer path.point", "els => els.length")
        figures = page.eval_on_selector_all("img.reporter-figure", "els => els.map(e => e.alt)")
    assert log.errors == [] and log.requests == []
    assert points == 2 * 3  # R² and Spearman at layers 0, 1, 2 (one position, one subset)
    assert figures == ["Predicted vs true at the best layer"]


def test_probe_run_prints_the_r2_table_and_best_layers(finished):
    from types import SimpleNamespace

    from probe.cli.main import printed_lines

    results, _ = finished
    out = "\n".join(printed_lines(SimpleNamespace(name=results.experiment), results)["stdout"])  # reads the name
    best = max(results.rows, key=lambda row: row.r2)
    assert f"best layer {best.layer} R² {best.r2:.3f} [{best.r2_ci[0]:.3f}, {best.r2_ci[1]:.3f}]" in out
    assert "chosen on inner folds" in out and "mean-predictor baseline" in out and "accuracy" not in out
