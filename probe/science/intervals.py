"""Uncertainty for accuracies, as pure functions over arrays: intervals, corrections and paired tests.

- ``bootstrap_interval``: a percentile bootstrap over rows of their 0/1 correctness; rows that share a group
  (a sentence template) are drawn together, so a group is never split between draws.
- ``wilson_interval``: the Wilson score interval for k right out of n independent rows.
- ``holm`` and ``benjamini_hochberg``: p-values adjusted for testing several layers at once.
- ``mcnemar_exact`` and ``paired_bootstrap``: is one scorer better than another on the same rows?

Everything is seeded and depends on nothing else: the same inputs and seed give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
# The most group draws made at once (resamples × groups): above it the resamples are drawn in blocks of as
# many resamples as fit, so that a bootstrap over 100,000 rows holds 8 MiB of draws, not 1.6 GB. Below it,
# one draw of every resample, as before: a set of up to 524 rows keeps its intervals to the last bit.
MOST_DRAWS = 1 << 20


def group_ids(groups: Sequence | None, n: int) -> np.ndarray:
    """Integer ids 0..G-1, one per distinct group; rows whose group is None (or no groups at all) are
    groups of their own."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} rows")
    named: dict = {}
    ids = []
    for group in groups:
        key = ("row", len(ids)) if group is None else ("group", group)
        ids.append(named.setdefault(key, len(named)))
    return np.asarray(ids, dtype=np.int64)


def resampled_groups(ids: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """How often each group is drawn in each resample: ``(resamples, n_groups)`` counts. Drawing groups
    (with replacement, as many as there are) keeps every group's rows together."""
    n_groups = int(ids.max()) + 1 if len(ids) else 0
    return _drawn_counts(np.random.default_rng(seed), n_groups, resamples)  # one bincount for every resample


def bootstrap_means(values: np.ndarray, groups: Sequence | None = None, resamples: int = RESAMPLES,
                    seed: int = 0) -> np.ndarray:
    """The mean of ``values`` (one number a row) in each of ``resamples`` group-bootstrap resamples."""
    values = np.asarray(values, dtype=np.float64)
    ids = group_ids(groups, len(values))
    if len(values) == 0:
        raise ValueError("no rows to resample")
    n_groups = int(ids.max()) + 1
    group_sums = np.bincount(ids, weights=values, minlength=n_groups)
    group_sizes = np.bincount(ids, minlength=n_groups)
    return np.concatenate([(counts @ group_sums) / (counts @ group_sizes)
                           for counts in resampled_group_blocks(ids, resamples, seed)])


def resampled_group_blocks(ids: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``resampled_groups``' counts a block of resamples at a time, at most ``MOST_DRAWS`` draws a block: all of
    them in one block (the very same counts) when they fit, else blocks drawn in turn from one generator."""
    n_groups = int(ids.max()) + 1 if len(ids) else 0
    if resamples * n_groups <= MOST_DRAWS:
        yield resampled_groups(ids, resamples, seed)
        return
    rng, per_block = np.random.default_rng(seed), max(1, MOST_DRAWS // n_groups)
    for start in range(0, resamples, per_block):  # one generator: each block's draws follow the last's
        yield _drawn_counts(rng, n_groups, min(per_block, resamples - start))


def _drawn_counts(rng: np.random.Generator, n_groups: int, resamples: int) -> np.ndarray:
    """``resampled_groups``' counts for ``resamples`` resamples, drawn from ``rng`` as it stands."""
    draws = rng.integers(0, n_groups, size=(resamples, n_groups))
    flat = (draws + n_groups * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n_groups).reshape(resamples, n_groups)


def bootstrap_interval(correct: Sequence, groups: Sequence | None = None, *, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (0/1 per row, or any number per row);
    ``groups``: one id per row, rows of one group are resampled together."""
    means = bootstrap_means(correct, groups, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion: ``successes`` right out of ``n`` independent rows."""
    if n <= 0:
        raise ValueError("a proportion needs at least one row")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} rows")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------- several tests at once


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate), in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjustment (controls the false discovery rate), in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


# ---------------------------------------------------------------- two scorers on the same rows


def mcnemar_exact(correct_a: Sequence, correct_b: Sequence) -> dict:
    """Exact (binomial) McNemar test on paired correctness: of the rows where exactly one of A and B is
    right, is A right as often as B? Two-sided p-value; ``a_only``/``b_only``: the discordant counts."""
    a, b = _paired(correct_a, correct_b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    smaller = min(a_only, b_only)
    tail = sum(math.comb(n, k) for k in range(smaller + 1)) / 2 ** n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2 * tail)}


def paired_bootstrap(correct_a: Sequence, correct_b: Sequence, groups: Sequence | None = None, *,
                     confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Accuracy of A minus accuracy of B on the same rows, with a percentile interval from resampling the
    rows (their groups together) once for both."""
    a, b = _paired(correct_a, correct_b)
    difference = a.astype(np.float64) - b.astype(np.float64)
    low, high = bootstrap_interval(difference, groups, confidence=confidence, resamples=resamples, seed=seed)
    return {"difference": float(difference.mean()), "ci": [low, high]}


def paired_test(correct_a: Sequence, correct_b: Sequence, groups: Sequence | None = None, *,
                seed: int = 0) -> dict:
    """Both: the accuracy difference with its paired interval, and McNemar's exact p-value."""
    return {**paired_bootstrap(correct_a, correct_b, groups, seed=seed), **mcnemar_exact(correct_a, correct_b),
            "rows": len(correct_a)}


def _paired(correct_a: Sequence, correct_b: Sequence) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a).astype(bool), np.asarray(correct_b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"paired tests need the same rows: {len(a)} vs {len(b)}")
    return a, b
