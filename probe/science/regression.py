"""Regression probes: a ridge probe, their folds, and their scores (R² and Spearman's correlation between
the out-of-fold predictions and the true numbers) with group-bootstrap intervals.

Scores are pooled over folds: every row's prediction comes from the fold that held it out, and R² and
Spearman are computed once on all of them (as ``cross_val_predict`` then ``r2_score`` would); each fold's
own R² is kept too (``fold_r2s``). Intervals resample the same pooled rows, rows of one group together, so
the interval is about the number it surrounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from probe.science import intervals

Fold = tuple[np.ndarray, np.ndarray]


def ridge_probe(seed: int = 0, alpha: float = 1.0, scale: bool = True):
    """Standardise the features (``scale``), then scikit-learn's ``Ridge(alpha=alpha)``. With ``scale: false``
    it is a plain ``Ridge(alpha=alpha)``. The default solver is exact and deterministic; ``seed`` reaches
    only the solvers that draw random numbers (sag, saga)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(scale, bool):
        raise ValueError(f"scale must be true or false, got {scale!r}")
    ridge = Ridge(alpha=alpha, random_state=seed)
    return make_pipeline(StandardScaler(), ridge) if scale else make_pipeline(ridge)


def splitter_name(grouped: bool) -> str:
    """The splitter regression folds use: numbers can't be stratified, so KFold, or GroupKFold with groups."""
    return "GroupKFold" if grouped else "KFold"


def score(y: np.ndarray, fold_list: list[Fold], fold_predictions: list[np.ndarray], metrics=None) -> dict[str, Any]:
    """Pooled out-of-fold R² and Spearman, each fold's R², and every row's prediction (NaN: not scored).
    ``metrics`` is accepted for the classification scorer's signature; the registered metrics are
    classification metrics, so none is computed here."""
    y = np.asarray(y, dtype=np.float64)
    predicted = np.full(len(y), np.nan)
    fold_r2s = []
    for (_, test), fold_predicted in zip(fold_list, fold_predictions):
        predicted[test] = fold_predicted
        fold_r2s.append(r2(y[test], predicted[test]))
    tested = ~np.isnan(predicted)
    return {
        "r2": r2(y[tested], predicted[tested]),
        "r2_std": float(np.nanstd(fold_r2s)),  # population std over folds (ddof=0)
        "fold_r2s": [float(value) for value in fold_r2s],
        "spearman": spearman(y[tested], predicted[tested]),
        "predictions": predicted.tolist(),
    }


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's ``r2_score``; NaN when the true numbers are all equal (R² is undefined there)."""
    from sklearn.metrics import r2_score

    if len(y_true) < 2 or np.all(y_true == y_true[0]):
        return float("nan")
    return float(r2_score(y_true, y_pred))


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """SciPy's Spearman rank correlation; NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(y_true) < 2 or np.all(y_true == y_true[0]) or np.all(y_pred == y_pred[0]):
        return float("nan")
    return float(spearmanr(y_true, y_pred).statistic)


# ---------------------------------------------------------------- intervals


def bootstrap_intervals(y_true: Sequence[float], y_pred: Sequence[float], groups: Sequence | None = None, *,
                        confidence: float = intervals.CONFIDENCE, resamples: int = intervals.RESAMPLES,
                        seed: int = 0) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of R² and Spearman over rows (a group's rows drawn together; the
    same draws as ``intervals.bootstrap_interval``'s for the same seed). A resample whose statistic is
    undefined (all true numbers equal) is left out; None when every one is."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"need the same, non-zero number of true and predicted values: {len(y_true)} vs {len(y_pred)}")
    ids = intervals.group_ids(groups, len(y_true))
    statistics = {"r2": [], "spearman": []}
    for counts in intervals.resampled_group_blocks(ids, resamples, seed):  # a large set is not drawn at once
        weights = counts[:, ids].astype(np.float64)  # (resamples of the block, rows)
        statistics["r2"].append(weighted_r2(y_true, y_pred, weights))
        statistics["spearman"].append(weighted_spearman(y_true, y_pred, weights))
    tail = (1 - confidence) / 2
    found = {}
    for name, blocks in statistics.items():
        values = np.concatenate(blocks)
        defined = values[~np.isnan(values)]
        found[name] = [float(q) for q in np.quantile(defined, [tail, 1 - tail])] if len(defined) else None
    return found


def weighted_r2(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """R² of each weighting (one row of ``weights`` per resample: how often each row was drawn)."""
    total = weights.sum(axis=1, keepdims=True)
    mean = (weights @ y_true)[:, None] / total
    residual = weights @ (y_true - y_pred) ** 2
    spread = (weights * (y_true[None, :] - mean) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread > 0, 1 - residual / np.where(spread > 0, spread, 1), np.nan)


def weighted_spearman(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman's correlation of each weighting, exactly as ``spearmanr`` on the rows repeated as often as
    drawn (ties get their average rank)."""
    a, b = _weighted_ranks(y_true, weights), _weighted_ranks(y_pred, weights)
    total = weights.sum(axis=1, keepdims=True)
    a = a - (weights * a).sum(axis=1, keepdims=True) / total
    b = b - (weights * b).sum(axis=1, keepdims=True) / total
    covariance = (weights * a * b).sum(axis=1)
    spread = np.sqrt((weights * a * a).sum(axis=1) * (weights * b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread > 0, covariance / np.where(spread > 0, spread, 1), np.nan)


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row's average rank among the rows repeated by ``weights`` (one weighting per resample)."""
    unique, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(unique)))
    per_value = np.add.reduceat(weights[:, order], starts, axis=1)  # how many copies of each distinct value
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1) / 2)[:, inverse]
