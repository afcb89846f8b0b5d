"""The permutation test: N label permutations, each cross-validated on the probe's own folds, give a null
distribution of accuracy per layer, and so a p-value (Phipson & Smyth 2010: ``(1 + #null ≥ observed) /
(1 + N)``, never 0) and a selectivity against the null's mean.

Labels are permuted within groups (templates): a group keeps its own labels, only which of its rows carries
which changes, so every fold keeps its label counts and the folds computed for the real labels are reused
as they are. Rows without a group are exchangeable with each other and are permuted together. The same N
permutations serve every layer and position of a subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONTROL = "permutation"


def within_group_permutations(y: np.ndarray, groups: Sequence, n: int, seed: int) -> list[np.ndarray]:
    """``n`` seeded permutations of ``y``, each shuffling labels only among rows of the same group."""
    y = np.asarray(y)
    blocks = _blocks(groups)
    rngs = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n)]
    permuted = []
    for rng in rngs:
        labels = y.copy()
        for rows in blocks:
            labels[rows] = y[rng.permutation(rows)]
        permuted.append(labels)
    return permuted


def _blocks(groups: Sequence) -> list[np.ndarray]:
    """Row numbers per group, in first-seen order; every row whose group is None in one block."""
    members: dict[object, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(("group", group) if group is not None else ("none",), []).append(row)
    return [np.asarray(rows) for rows in members.values() if len(rows) > 1]


def p_value(observed: float, null: Sequence[float]) -> float:
    """One-sided: how often a permuted-label probe did at least as well, counting the observed one."""
    null = np.asarray(null, dtype=float)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def tasks(key: tuple, X: np.ndarray, permuted: list[np.ndarray], folds: list) -> list:
    """One FitTask per permutation, keyed ``(*key, "permutation", i)``, on the real labels' folds."""
    from probe.science.probes import FitTask

    return [FitTask((*key, CONTROL, i), X, y, folds, metrics=False) for i, y in enumerate(permuted)]


def fill(row, scores: dict, key: tuple, n: int) -> None:
    """Set the row's permutation fields from the scores of its ``n`` permutation tasks."""
    null = [scores[(*key, CONTROL, i)]["accuracy"] for i in range(n)]
    row.permutation_accuracies = null
    row.permutation_accuracy = float(np.mean(null))
    row.permutation_p_value = p_value(row.accuracy, null)
    row.permutation_selectivity = row.accuracy - row.permutation_accuracy
