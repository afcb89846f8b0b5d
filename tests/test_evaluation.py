"""Evaluation protocols: cross-validation through scikit-learn splitters (today's folds unchanged), and a
fixed train/test split — checked on a planted signal and against plain scikit-learn on the run's own
vectors; the probe and the protocol recorded in results.json, summary.md and the CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tiny_gpt2 import build_tiny_gpt2

from probe.pipeline.config import ConfigError, validate
from probe.pipeline.evaluation import (
    CrossValidation,
    FixedSplit,
    protocol,
    shuffled_within,
)
from probe.pipeline.run import run_experiment
from probe.science.probes import (
    FitTask,
    ProbeError,
    cross_validate,
    evaluate,
    folds,
    logistic_probe,
)

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

CUES = {"animal": ["garden", "furry", "blind", "burrowing"], "unit": ["chemistry", "gram", "molar", "weighed"]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=3)


# ---------------------------------------------------------------- the config field


@pytest.mark.parametrize("evaluation, message", [
    ({"cv": 1}, "at least 2"),
    ({"cv": "StratifedKFold"}, "did you mean 'StratifiedKFold'"),
    ({"split_field": "split", "train": "train"}, "missing test"),
    ({"cv": 5, "split_field": "split", "train": "a", "test": "b"}, "not both"),
    ({"folds": 3}, "unknown key 'folds'"),
    ({"split_field": "split", "train": "train", "test": "train"}, "different values"),
    ("fixed", "must be a mapping"),
])
def test_a_bad_evaluation_names_the_field_and_what_it_accepts(evaluation, message):
    with pytest.raises(ConfigError, match="field 'evaluation'") as error:
        validate({"model": "m", "dataset": "mole", "evaluation": evaluation})
    assert message in str(error.value)


def test_the_protocol_follows_the_config():
    def of(**fields):
        return protocol(validate({"model": "m", "dataset": "mole", **fields}))

    assert of() == CrossValidation(5) and of(folds=3) == CrossValidation(3)
    assert of(evaluation={"cv": 4}) == CrossValidation(4)
    assert of(folds=3, evaluation={"cv": "KFold"}) == CrossValidation(3, "KFold")
    assert of(evaluation={"split_field": "split", "train": "tr", "test": "te"}) == FixedSplit("split", "tr", "te")


# ---------------------------------------------------------------- cross-validation through splitters


def grouped_labels(n_groups=12, per_group=4):
    y = np.array(["a", "b"] * (n_groups * per_group // 2))
    groups = [f"g{i // per_group}" for i in range(len(y))]
    return y, groups


def test_default_folds_are_scikit_learns_splitters_with_the_seed():
    y, groups = grouped_labels()
    ids = np.repeat(np.arange(12), 4)
    expected = StratifiedGroupKFold(5, shuffle=True, random_state=7).split(np.zeros(len(y)), y, ids)
    for (train, test), (e_train, e_test) in zip(folds(y, groups, 5, 7), expected):
        assert train.tolist() == e_train.tolist() and test.tolist() == e_test.tolist()
    expected = StratifiedKFold(5, shuffle=True, random_state=7).split(np.zeros(len(y)), y)
    assert [t.tolist() for _, t in folds(y, None, 5, 7)] == [t.tolist() for _, t in expected]
    named = folds(y, groups, 5, 7, splitter="StratifiedGroupKFold")
    assert [t.tolist() for _, t in named] == [t.tolist() for _, t in folds(y, groups, 5, 7)]


def test_a_named_splitter_is_used_as_named():
    y, groups = grouped_labels()
    ungrouped = folds(y, groups, 4, 0, splitter="StratifiedKFold")  # ignores the groups: they straddle
    assert any(len({groups[i] for i in test} & {groups[i] for i in train}) for train, test in ungrouped)
    for train, test in folds(y, groups, 4, 0, splitter="GroupKFold"):
        assert not {groups[i] for i in test} & {groups[i] for i in train}
    with pytest.raises(ProbeError, match="GroupKFold"):
        folds(y[:6], groups[:6], 4, 0, splitter=StratifiedGroupKFold(4))  # 2 groups for 4 folds


def test_cross_validate_takes_cv_as_scikit_learn_does():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.array(["a", "b"] * 20)
    by_number = cross_validate(X, y, None, logistic_probe, cv=4)
    by_object = cross_validate(X, y, None, logistic_probe, cv=StratifiedKFold(4, shuffle=True, random_state=0))
    assert len(by_number["fold_accuracies"]) == 4 and by_number == by_object


# ---------------------------------------------------------------- a fixed split on a planted signal


def test_a_fixed_split_reproduces_a_planted_accuracy_on_its_test_rows_only():
    rng = np.random.default_rng(1)
    y = np.array(["a", "b"] * 40)
    X = rng.normal(size=(80, 6))
    X[:, 0] += np.where(y == "a", 6.0, -6.0)  # a planted direction, separable by a wide margin
    parts = np.array(["train"] * 60 + ["test"] * 20, dtype=object)
    y_scored = y.copy()
    y_scored[[60, 63, 66, 69, 72]] = np.where(y[[60, 63, 66, 69, 72]] == "a", "b", "a")  # 5 of 20 test rows lie
    split = FixedSplit("split", "train", "test")
    result = evaluate([FitTask("k", X, y_scored, split.folds(parts))], logistic_probe, n_jobs=1)["k"]
    assert result["accuracy"] == pytest.approx(15 / 20)
    assert result["fold_accuracies"] == [pytest.approx(0.75)] and result["accuracy_std"] == 0.0
    assert np.sum(result["confusion"]) == 20  # the confusion counts test rows, never training rows


def test_the_shuffled_control_permutes_within_each_part():
    y = np.array(["a"] * 10 + ["b"] * 10 + ["a"] * 2 + ["b"] * 8)
    parts = ["train"] * 20 + ["test"] * 10
    shuffled = shuffled_within(y, parts, ["train", "test"], seed=0)
    assert sorted(shuffled[:20]) == sorted(y[:20]) and sorted(shuffled[20:]) == sorted(y[20:])
    assert not np.array_equal(shuffled, y)
    assert np.array_equal(shuffled, shuffled_within(y, parts, ["train", "test"], seed=0))


# ---------------------------------------------------------------- a run with a fixed split


def planted_file(folder: Path) -> Path:
    """A JSONL file whose sense is cued before the word (a causal model sees it), with a split column and
    a `word` column; "mole" occurs twice in some rows, located by span_start/span_end."""
    rows = []
    for i in range(72):
        label = "animal" if i % 2 else "unit"
        cue = CUES[label][(i // 2) % 4]
        prefix = "A mole? " if i % 6 == 1 else ""
        text = f"{prefix}Yesterday the {cue} mole was here."
        start = text.index(" mole", len(prefix)) + 1
        pair = i // 2  # both senses of a pair go to the same part, so every part has both
        split = "test" if pair % 4 == 0 else "dev" if pair % 9 == 1 else "train"
        rows.append({"text": text, "label": label, "split": split, "word": "mole", "span_start": start,
                     "span_end": start + 4})
    path = folder / "planted.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stored_vectors(cache: Path, n_rows: int) -> dict[int, np.ndarray]:
    """The run's target vectors per layer, read straight from its feature cache (no probe code): the model's
    own store is written first, the random-weights control's after it."""
    folder = min((f for f in (cache / "features").iterdir() if (f / "complete.json").exists()),
                 key=lambda f: (f / "complete.json").stat().st_mtime_ns)
    layers = json.loads((folder / "complete.json").read_text())["layers"]
    out = {layer: None for layer in layers}
    for chunk in sorted(folder.glob("chunk-*.safetensors")):
        tensors = load_file(chunk)
        for slot, layer in enumerate(layers):
            if out[layer] is None:
                out[layer] = np.empty((n_rows, tensors["target"].shape[-1]), dtype=np.float32)
            out[layer][tensors["rows"]] = tensors["target"][slot]
    return out


def sklearn_accuracy(X, y, train, test, C) -> float:
    """The independent script: scikit-learn's own pipeline, fit on train, scored on test."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    return float(model.fit(X[train], y[train]).score(X[test], y[test]))


@pytest.fixture(scope="module")
def fixed_run(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("fixed")
    config = validate({
        "model": str(tiny_model), "dataset": {"name": "file", "path": str(planted_file(base))},
        "probe": {"name": "logreg", "C": 1.0}, "controls": ["majority", "shuffled", "random_weights"],
        "evaluation": {"split_field": "split", "train": "train", "test": "test", "dev": "dev"},
        "split_by": "word", "reporters": ["json", "csv", "summary", "plots", "html"],
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        results = run_experiment(config, base / "out", cache_dir=base / "cache", progress=False, n_jobs=1)
    return {"results": results, "base": base}


def test_a_fixed_split_matches_plain_scikit_learn_on_the_same_vectors(fixed_run):
    results, base = fixed_run["results"], fixed_run["base"]
    rows = [json.loads(line) for line in (base / "planted.jsonl").read_text().splitlines()]
    y, parts = np.array([r["label"] for r in rows]), np.array([r["split"] for r in rows])
    train, test, dev = (np.flatnonzero(parts == p) for p in ("train", "test", "dev"))
    vectors = {layer: X for layer, X in stored_vectors(base / "cache", len(rows)).items()}
    for row in results.rows:
        if row.subset == "all":
            X = vectors[row.layer]
            assert row.accuracy == pytest.approx(sklearn_accuracy(X, y, train, test, C=1.0), abs=0.005)
            assert row.dev_accuracy == pytest.approx(sklearn_accuracy(X, y, train, dev, C=1.0), abs=0.005)
            assert np.sum(row.confusion) == len(test)


def test_every_control_runs_under_the_fixed_split(fixed_run):
    results = fixed_run["results"]
    base = fixed_run["base"]
    rows = [json.loads(line) for line in (base / "planted.jsonl").read_text().splitlines()]
    test_labels = [r["label"] for r in rows if r["split"] == "test"]
    majority = max(test_labels.count(label) for label in set(test_labels)) / len(test_labels)
    train_labels = [r["label"] for r in rows if r["split"] == "train"]
    train_majority = max(set(train_labels), key=lambda label: (train_labels.count(label), label))
    assert results.baseline("majority").accuracy == pytest.approx(test_labels.count(train_majority) / len(test_labels))
    assert results.baseline("majority").accuracy <= majority
    for row in results.rows:
        assert row.shuffled_accuracy is not None and row.random_weights_accuracy is not None
        assert row.selectivity == pytest.approx(row.accuracy - row.shuffled_accuracy)


def test_the_reports_say_which_protocol_ran_and_the_probes_regularisation(fixed_run):
    results, out = fixed_run["results"], fixed_run["base"] / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["evaluation"] == {"protocol": "fixed split", "split_field": "split", "train": "train",
                                   "test": "test", "dev": "dev", "rows": {"train": 48, "test": 18, "dev": 6}}
    assert saved["probe"]["name"] == "logreg" and saved["probe"]["C"] == 1.0
    assert saved["probe"]["params"]["logisticregression__max_iter"] == 2000
    summary = (out / "summary.md").read_text()
    assert "fixed split on column 'split': trained on 'train' (48 rows), scored on 'test' (18 rows)" in summary
    assert "regularisation C = 1.0" in summary
    best = max(row.accuracy for row in results.rows if row.subset == "all")
    assert f"| {best:.3f} |" in summary  # one test score: no ± fold spread
    assert "fixed split on column &#x27;split&#x27;" in (out / "report.html").read_text()
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "dev_accuracy" in header
    assert results.layers["dev_accuracy"].notna().all()


def test_cross_validation_is_recorded_with_its_splitter(tiny_model, tmp_path):
    config = validate({"model": str(tiny_model), "dataset": "mole", "folds": 3, "controls": [], "layers": [1],
                       "reporters": ["json", "summary"]})
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    assert results.evaluation == {"protocol": "cross-validation", "splitter": "StratifiedGroupKFold", "n_splits": 3}
    assert results.probe["C"] == 0.1  # probe's default, not scikit-learn's 1.0
    assert "3-fold cross-validation (StratifiedGroupKFold), seed 0" in (tmp_path / "out" / "summary.md").read_text()


def test_a_fixed_split_that_cannot_train_says_why(tiny_model, tmp_path):
    path = planted_file(tmp_path)
    config = validate({"model": str(tiny_model), "dataset": {"name": "file", "path": str(path)},
                       "evaluation": {"split_field": "split", "train": "train", "test": "validation"},
                       "controls": [], "reporters": []})
    with pytest.raises(ConfigError, match=r"names split = 'validation', which no row has; values found: 'dev' \(6 rows\)"):
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    config = validate({"model": str(tiny_model), "dataset": {"name": "file", "path": str(path)},
                       "evaluation": {"split_field": "fold", "train": "train", "test": "test"}, "reporters": []})
    with pytest.raises(ConfigError, match="field 'evaluation' names column 'fold'"):
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)


def test_the_console_gives_a_fixed_splits_one_score_without_a_spread(fixed_run):
    from probe.report.writers import accuracy_text

    from probe.science.intervals import wilson_interval

    results = fixed_run["results"]
    best = results.best_rows()[("target", "all")]
    # what `probe run` prints after "best layer N accuracy": the accuracy and its Wilson interval on the test rows
    tested = best.correct.replace(".", "")
    assert len(tested) == results.evaluation["rows"]["test"]
    low, high = wilson_interval(tested.count("1"), len(tested))
    assert best.accuracy_ci == [low, high]
    assert accuracy_text(best) == f"{best.accuracy:.3f} [{low:.3f}, {high:.3f}]"
    assert "Wilson" in results.statistics["interval"]
    older = best.model_copy(update={"accuracy_ci": None})  # results.json from before intervals: no spread
    assert accuracy_text(older) == f"{best.accuracy:.3f}"
    cross_validated = older.model_copy(update={"fold_accuracies": [0.5, 0.7], "accuracy_std": 0.1})
    assert accuracy_text(cross_validated) == f"{cross_validated.accuracy:.3f} ± 0.100"
