"""probe.science.probes: cross-validated linear probes and their controls, on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from probe.science.probes import (
    ProbeError,
    cross_validate,
    folds,
    logistic_probe,
    majority_baseline,
    shuffled_label_control,
)

SENSES = np.array(["animal", "skin", "unit"])


def planted_signal(n_rows=300, d=16, seed=0):
    """Vectors whose first feature encodes the sense (plus unit noise everywhere); balanced senses."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n_rows) % len(SENSES)
    X = rng.normal(size=(n_rows, d)).astype(np.float32)
    X[:, 0] += 5.0 * codes
    return X, SENSES[codes]


def template_leak(n_groups=40, rows_per_group=6, d=64, seed=0):
    """Each group (template) has its own vector and a random sense: only memorising templates helps."""
    rng = np.random.default_rng(seed)
    group_vectors = rng.normal(size=(n_groups, d))
    group_senses = SENSES[:2][np.arange(n_groups) % 2]
    groups = np.repeat(np.arange(n_groups), rows_per_group)
    X = (group_vectors[groups] + 0.1 * rng.normal(size=(len(groups), d))).astype(np.float32)
    return X, group_senses[groups], [f"template-{g}" for g in groups]


def test_logistic_probe_is_scaler_then_logistic_regression():
    probe = logistic_probe(seed=3, C=0.5, max_iter=100)
    scaler, regression = (step for _, step in probe.steps)
    assert type(scaler).__name__ == "StandardScaler"
    assert (regression.C, regression.max_iter, regression.random_state) == (0.5, 100, 3)
    assert regression.solver == "newton-cg"  # measured faster and nearer the optimum than lbfgs (see its docstring)


def test_planted_signal_is_found_and_the_shuffled_control_stays_at_chance():
    X, y = planted_signal()
    result = cross_validate(X, y, None, logistic_probe, n_folds=5, seed=0)
    control = shuffled_label_control(X, y, None, logistic_probe, n_folds=5, seed=0)
    chance = 1 / len(SENSES)
    assert result["accuracy"] > 0.9 and result["macro_f1"] > 0.9
    assert chance - 0.15 < control["accuracy"] < chance + 0.15
    assert result["accuracy"] - control["accuracy"] > 0.5  # selectivity


def test_result_fields_are_consistent():
    X, y = planted_signal()
    result = cross_validate(X, y, None, logistic_probe, n_folds=4, seed=1)
    assert result["labels"] == SENSES.tolist()
    assert set(result["per_sense_recall"]) == set(SENSES.tolist())
    confusion = np.array(result["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == len(y)
    # Pooled recall is the confusion diagonal over the row sums.
    np.testing.assert_allclose(
        [result["per_sense_recall"][label] for label in result["labels"]], confusion.diagonal() / confusion.sum(1)
    )
    assert len(result["fold_accuracies"]) == 4
    assert result["accuracy"] == pytest.approx(np.mean(result["fold_accuracies"]))
    assert result["accuracy_std"] == pytest.approx(np.std(result["fold_accuracies"]))


def test_majority_baseline_scores_the_majority_share():
    y = np.array(["animal"] * 70 + ["unit"] * 30)
    result = majority_baseline(y, None, n_folds=5, seed=0)
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["per_sense_recall"] == {"animal": 1.0, "unit": 0.0}


def test_grouped_folds_never_split_a_group():
    X, y, groups = template_leak()
    groups[:12] = [None] * 12  # ungrouped rows are groups of their own
    tested = []
    for train, test in folds(y, groups, n_folds=5, seed=0):
        train_groups = {groups[i] for i in train} - {None}
        test_groups = {groups[i] for i in test} - {None}
        assert not train_groups & test_groups
        tested.extend(test.tolist())
    assert sorted(tested) == list(range(len(y)))  # every row tested exactly once


def test_grouped_folds_stop_templates_leaking_into_the_score():
    X, y, groups = template_leak()
    leaky = cross_validate(X, y, None, logistic_probe, n_folds=5, seed=0)
    honest = cross_validate(X, y, groups, logistic_probe, n_folds=5, seed=0)
    assert leaky["accuracy"] > 0.9
    assert honest["accuracy"] < 0.75


def test_same_seed_same_results():
    X, y = planted_signal(n_rows=120)
    groups = [f"g{i // 4}" for i in range(len(y))]
    for group_ids in (None, groups):
        first = cross_validate(X, y, group_ids, logistic_probe, n_folds=3, seed=7)
        assert cross_validate(X, y, group_ids, logistic_probe, n_folds=3, seed=7) == first
        control = shuffled_label_control(X, y, group_ids, logistic_probe, n_folds=3, seed=7)
        assert shuffled_label_control(X, y, group_ids, logistic_probe, n_folds=3, seed=7) == control
        baseline = majority_baseline(y, group_ids, n_folds=3, seed=7)
        assert majority_baseline(y, group_ids, n_folds=3, seed=7) == baseline


def test_different_seeds_split_differently():
    y = np.array(["a", "b"] * 20)
    first = [test.tolist() for _, test in folds(y, None, 4, seed=0)]
    second = [test.tolist() for _, test in folds(y, None, 4, seed=1)]
    assert first != second


def test_label_with_fewer_rows_than_folds_is_a_clear_error():
    y = ["animal"] * 10 + ["unit"] * 2
    with pytest.raises(ProbeError, match=r"fewer rows than n_folds=5: 'unit' \(2\)"):
        cross_validate(np.zeros((12, 3)), y, None, logistic_probe, n_folds=5)


def test_fewer_groups_than_folds_is_a_clear_error():
    y = ["animal", "unit"] * 10
    groups = ["a", "b", "c"] * 6 + ["a", "b"]
    with pytest.raises(ProbeError, match="only 3 distinct groups"):
        folds(y, groups, n_folds=5, seed=0)


def test_mismatched_rows_and_labels():
    with pytest.raises(ProbeError, match="X has 4 rows but y has 3"):
        cross_validate(np.zeros((4, 2)), ["a", "b", "a"], None, logistic_probe, n_folds=2)


def test_a_fit_key_is_the_same_whether_or_not_the_features_hash_is_reused():
    """fit_all hashes a matrix shared by many tasks once; the keys must not change for that."""
    from probe.science.probes import logistic_probe
    from probe.store import caches as fitcache

    rng = np.random.default_rng(0)
    X, other = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    y = np.array([0, 1] * 10)
    folds = [(np.arange(10), np.arange(10, 20))]
    seen: dict = {}
    alone = fitcache.fit_key(logistic_probe(), X, y, folds)
    assert fitcache.fit_key(logistic_probe(), X, y, folds, seen) == alone
    assert fitcache.fit_key(logistic_probe(), X, y, folds, seen) == alone  # from ``seen`` this time
    assert fitcache.fit_key(logistic_probe(), X, y[::-1], folds, seen) != alone
    assert fitcache.fit_key(logistic_probe(), other, y, folds, seen) != alone
