"""Statistics by default: probe.science.intervals against hand-computed values, and on a tiny run the
interval on every layer row, adjusted p-values, the nested best layer, paired tests and `probe compare`."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_gpt2 import build_tiny_gpt2

from probe import plugins
from probe.pipeline import statistics
from probe.pipeline.config import validate
from probe.pipeline.results import load_results
from probe.pipeline.run import run_experiment
from probe.science import intervals


def test_wilson_matches_the_textbook_value():
    # 8 right of 10, 95 %: the Wilson interval is (0.4902, 0.9433), worked by hand with z = 1.96
    low, high = intervals.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_by_the_formula_and_at_the_edges():
    z = 1.959963984540054
    n, k = 50, 0
    centre = (z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(z * z / (4 * n * n)) / (1 + z * z / n)
    assert intervals.wilson_interval(k, n) == pytest.approx((0.0, centre + half))
    low, high = intervals.wilson_interval(n, n)
    assert high == 1.0 and low == pytest.approx(1 - (centre + half))
    with pytest.raises(ValueError):
        intervals.wilson_interval(3, 2)


def test_bootstrap_is_deterministic_under_a_seed_and_moves_with_it():
    correct = np.random.default_rng(1).random(120) < 0.7
    first = intervals.bootstrap_interval(correct, seed=3)
    assert intervals.bootstrap_interval(correct, seed=3) == first
    # another seed draws other resamples (the interval's ends, multiples of 1/120, may still coincide)
    assert not np.array_equal(intervals.bootstrap_means(correct, seed=4), intervals.bootstrap_means(correct, seed=3))
    low, high = first
    assert low < correct.mean() < high
    # close to Wilson's for independent rows
    wilson = intervals.wilson_interval(int(correct.sum()), len(correct))
    assert low == pytest.approx(wilson[0], abs=0.03) and high == pytest.approx(wilson[1], abs=0.03)


def test_group_resampling_never_splits_a_group():
    groups = ["a", "a", "a", "b", "b", None, None, "c"]
    ids = intervals.group_ids(groups, len(groups))
    assert ids.tolist() == [0, 0, 0, 1, 1, 2, 3, 4]  # each None row a group of its own
    counts = intervals.resampled_groups(ids, resamples=500, seed=0)
    assert counts.shape == (500, 5) and (counts.sum(axis=1) == 5).all()
    # A row's weight in a resample is its group's count: rows of one group always weigh the same.
    weights = counts[:, ids]
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 3] == weights[:, 4]).all()
    assert (weights[:, 5] != weights[:, 6]).any()  # ungrouped rows are drawn on their own


def test_groups_widen_the_interval_when_groups_agree_within():
    # 20 templates of 10 rows each, each template all right or all wrong: really 20 observations, not 200.
    per_template = np.random.default_rng(0).random(20) < 0.6
    correct = np.repeat(per_template, 10)
    groups = np.repeat(np.arange(20), 10).tolist()
    rows_low, rows_high = intervals.bootstrap_interval(correct, seed=0)
    grouped_low, grouped_high = intervals.bootstrap_interval(correct, groups, seed=0)
    assert grouped_high - grouped_low > 2 * (rows_high - rows_low)


def test_holm_and_bh_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005·4, 0.01·3, 0.03·2, 0.04·1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    assert intervals.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 0.005·4/1, 0.01·4/2, 0.03·4/3, 0.04·4/4 = 0.02, 0.02, 0.04, 0.04 → running min from the top: same
    assert intervals.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert intervals.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert intervals.holm([]) == [] and intervals.benjamini_hochberg([]) == []


def test_corrections_agree_with_statsmodels():
    from statsmodels.stats import multitest
    p = np.random.default_rng(2).random(17) ** 3
    assert intervals.holm(p) == pytest.approx(multitest.multipletests(p, method="holm")[1].tolist())
    assert intervals.benjamini_hochberg(p) == pytest.approx(multitest.multipletests(p, method="fdr_bh")[1].tolist())


def test_mcnemar_exact_against_the_binomial():
    a = np.array([1] * 9 + [0] * 1 + [1] * 5 + [0] * 5, dtype=bool)  # rows 0-8: only A right; row 9: only B
    b = np.array([0] * 9 + [1] * 1 + [1] * 5 + [0] * 5, dtype=bool)
    test = intervals.mcnemar_exact(a, b)
    assert (test["a_only"], test["b_only"]) == (9, 1)
    assert test["p_value"] == pytest.approx(2 * (1 + 10) / 2 ** 10)  # 2 · P(X ≤ 1), X ~ Binomial(10, ½)
    assert intervals.mcnemar_exact(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        intervals.mcnemar_exact(a, b[:-1])


def test_paired_bootstrap_of_the_difference():
    rng = np.random.default_rng(5)
    b = rng.random(200) < 0.6
    a = b | (rng.random(200) < 0.3)  # A right wherever B is, and on more rows
    test = intervals.paired_test(a, b, seed=0)
    assert test["difference"] == pytest.approx(a.mean() - b.mean())
    assert 0 < test["ci"][0] < test["difference"] < test["ci"][1]
    assert test["b_only"] == 0 and test["p_value"] < 1e-6
    assert intervals.paired_test(a, b, seed=0) == test


# ---------------------------------------------------------------- on a real (tiny) run



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


def _config(model, **fields):
    return validate({"model": str(model), "dataset": "mole", "folds": 3, "split_by": "cue",
                     "controls": ["majority", "shuffled", "permutation"], "permutations": 9,
                     "reporters": ["json", "csv", "summary"], **fields})


def _run(config, folder: Path, cache: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        plugins.reset_plugin_manager()
        results = run_experiment(config, folder, cache_dir=cache, progress=False, n_jobs=1)
        plugins.reset_plugin_manager()
    return results


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    return {"results": _run(_config(tiny_model), base / "out", base / "cache"), "base": base}


def test_every_layer_row_carries_an_interval_in_json_csv_and_table(tiny_run):
    results, out = tiny_run["results"], tiny_run["base"] / "out"
    assert len(results.rows) == 3 * 4  # layers 0..2 × subsets all, both, left, right
    for row in results.rows:
        low, high = row.accuracy_ci
        right = row.correct.count("1") / (row.correct.count("1") + row.correct.count("0"))
        assert 0 <= low <= right <= high <= 1  # the pooled out-of-fold accuracy lies inside
    on_disk = json.loads((out / "results.json").read_text())
    assert all(len(row["accuracy_ci"]) == 2 for row in on_disk["layers"])
    assert on_disk["baselines"]["majority"]["accuracy_ci"][0] <= on_disk["baselines"]["majority"]["accuracy"]
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(r["accuracy_ci_low"]) <= float(r["accuracy"]) + 0.05 for r in rows)
    assert {f"recall_{sense}" for sense in results.dataset.labels} <= set(rows[0])
    table = results.layers
    assert table[["accuracy_ci_low", "accuracy_ci_high"]].notna().all().all()
    first = results.rows[0]
    assert table.iloc[0][f"recall_{first.labels[0]}"] == first.per_sense_recall[first.labels[0]]
    summary = (out / "summary.md").read_text()
    assert "95% percentile bootstrap" in summary and "chosen without peeking" in summary


def test_the_interval_is_the_seeded_group_bootstrap_of_the_stored_rows(tiny_run):
    results = tiny_run["results"]
    groups = results.dataset.groups
    assert groups is not None and len(groups) == results.dataset.rows  # the mole rows share templates
    row = next(r for r in results.rows if r.subset == "left" and r.layer == 2)
    rows, right = statistics.scored(row.correct)
    expected = intervals.bootstrap_interval(right, [groups[i] for i in rows], seed=results.settings["seed"])
    assert row.accuracy_ci == list(expected)
    assert int(right.sum()) == int(np.trace(np.asarray(row.confusion)))  # the stored rows are the scored ones
    assert len(rows) == sum(map(sum, row.confusion)) < results.dataset.rows  # a subset: the others are "."


def test_permutation_p_values_are_adjusted_over_each_series_layers(tiny_run):
    for (_, _), series in tiny_run["results"].series().items():
        raw = [row.permutation_p_value for row in series]
        assert [row.permutation_p_holm for row in series] == pytest.approx(intervals.holm(raw))
        assert [row.permutation_p_bh for row in series] == pytest.approx(intervals.benjamini_hochberg(raw))
        assert all(row.permutation_p_holm >= row.permutation_p_value for row in series)


def test_the_best_layer_is_chosen_per_outer_fold(tiny_run):
    results = tiny_run["results"]
    assert {(b["position"], b["subset"]) for b in results.best_layer} == set(results.series())
    for best in results.best_layer:
        assert sum(best["chosen"].values()) == 3 == len(best["per_outer_fold"])  # one choice per outer fold
        assert best["layer"] == Counter(best["per_outer_fold"]).most_common(1)[0][0]
        assert best["accuracy_ci"][0] <= best["accuracy"] <= best["accuracy_ci"][1]
    assert len(results.best()) == len(results.series())  # the peeking table still works


def test_inner_folds_stay_inside_the_outer_training_rows_and_keep_groups_whole(tiny_run):
    from probe.pipeline.run import load_dataset, make_splits

    config = _config("unused")
    rows, _ = load_dataset(config)
    for split in make_splits(rows, config):
        groups = [rows["group"][i] for i in split.index]
        plan = statistics.inner_folds(split, groups, seed=0)
        for (outer_train, outer_test), inner in zip(split.folds, plan):
            for inner_train, inner_test in inner:
                assert set(inner_train) | set(inner_test) <= set(outer_train)
                assert not set(inner_test) & set(outer_test) and not set(inner_train) & set(outer_test)
                train_groups = {groups[i] for i in inner_train if groups[i] is not None}
                assert not train_groups & {groups[i] for i in inner_test if groups[i] is not None}


def test_the_nested_choice_differs_from_peeking_where_it_should():
    # Two outer folds of four rows. Inner folds prefer layer 0 everywhere; on the outer test rows layer 1 is
    # perfect. Peeking picks layer 1 (accuracy 1.0); the nested choice picks layer 0 and reports its 0.5.
    from types import SimpleNamespace

    split = SimpleNamespace(name="all", index=np.arange(8), y=np.zeros(8),
                            folds=[(np.arange(4, 8), np.arange(4)), (np.arange(4), np.arange(4, 8))])
    rows = {0: SimpleNamespace(correct="10101010"), 1: SimpleNamespace(correct="11111111")}
    chosen = statistics.choose_layers({0: [0.9, 0.8], 1: [0.6, 0.7]}, [0, 1])
    assert chosen == [0, 0]
    best = statistics.nested_best(rows, split, chosen, groups=None, fixed_split=False, seed=0)
    assert best["layer"] == 0 and best["accuracy"] == 0.5 and best["chosen"] == {"0": 2}
    assert statistics.choose_layers({0: [0.7, 0.7], 1: [0.7, 0.6]}, [0, 1]) == [0, 0]  # ties: the lower layer


def test_paired_tests_between_layers_are_in_the_results(tiny_run):
    results = tiny_run["results"]
    paired = results.statistics["paired"]
    assert paired and all(test["ci"][0] <= test["difference"] <= test["ci"][1] for test in paired)
    test = paired[0]
    a = next(r for r in results.rows if f"layer {r.layer}" == test["a"] and r.subset == test["subset"])
    b = next(r for r in results.rows if f"layer {r.layer}" == test["b"] and r.subset == test["subset"])
    _, right_a = statistics.scored(a.correct)
    _, right_b = statistics.scored(b.correct)
    assert (test["a_only"], test["b_only"]) == (int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))


def test_probe_compare_pairs_two_runs_on_the_same_rows(tiny_run, tiny_model):
    from probe.cli.main import cli

    base = tiny_run["base"]
    other = _run(_config(tiny_model, probe={"name": "logreg", "C": 1.0}), base / "other", base / "cache")
    compared = statistics.compare_runs(tiny_run["results"], other)
    assert compared["rows_match"] and len(compared["tests"]) == len(other.rows)
    same = statistics.compare_runs(tiny_run["results"], tiny_run["results"])
    assert all(t["difference"] == 0 and t["p_value"] == 1.0 for t in same["tests"])
    shown = CliRunner().invoke(cli, ["compare", str(base / "out"), str(base / "other")], env={"PROBE_PLUGINS": ""})
    assert shown.exit_code == 0, shown.output
    assert "same rows" in shown.output and "McNemar p" in shown.output


def test_probe_compare_refuses_runs_on_different_rows(tiny_run, tiny_model):
    from probe.cli.main import cli

    base = tiny_run["base"]
    fewer = _run(_config(tiny_model, filter={"label": ["animal", "spy"]}, split_by=None), base / "fewer",
                 base / "cache")
    with pytest.raises(statistics.UnpairedRuns, match="different rows"):
        statistics.compare_runs(tiny_run["results"], fewer)
    shown = CliRunner().invoke(cli, ["compare", str(base / "out"), str(base / "fewer")], env={"PROBE_PLUGINS": ""})
    assert shown.exit_code == 1 and "different rows" in shown.output and "Traceback" not in shown.output
    older = load_results(base / "out").model_copy(deep=True)
    older.dataset.digest = None
    with pytest.raises(statistics.UnpairedRuns, match="run it again"):
        statistics.compare_runs(older, fewer)


def test_recall_curves_are_drawn_per_sense(tiny_run, tmp_path):
    from probe.report import figures, writers

    results = tiny_run["results"]
    png = writers.plot_recall(results, tmp_path)
    assert png.exists() and png.stat().st_size > 0
    figure = figures.recall_figure(results.to_dict())
    assert len(figure["data"]) == len(results.dataset.labels) * len(results.series())
    accuracy = figures.accuracy_figure(results.to_dict())
    assert accuracy["data"][0]["error_y"]["symmetric"] is False  # the interval, not ± std


def test_a_subset_too_small_for_inner_folds_is_left_unchosen_and_says_why():
    from types import SimpleNamespace

    y = np.array(["a"] * 6 + ["b"] * 3)
    split = SimpleNamespace(y=y, folds=[(np.array([0, 1, 2, 3, 4, 6, 7]), np.array([5, 8]))])  # two b's to train
    assert statistics.inner_folds(split, None, seed=0) is None
    assert statistics.UNCHOSEN["layer"] is None and "too few rows" in statistics.UNCHOSEN["reason"]
