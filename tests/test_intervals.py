"""probe.science.intervals: intervals, corrections and paired tests against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def test_corrections_agree_with_statsmodels_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
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
