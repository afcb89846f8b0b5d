"""A regression run's results (task: regression): each layer's row from its fits, the mean baseline, and the
statistics that make sense for numbers — intervals of R² and Spearman (a group bootstrap over the pooled
out-of-fold rows) and the best layer chosen on nested folds by R².

What is for classes only is left out, not faked: per-sense recall, the confusion matrix, macro-F1 and the
paired McNemar tests between layers (results.json's ``statistics.not_applicable`` says so).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from probe.pipeline.results import Baseline, LayerResult
from probe.pipeline.statistics import INNER_FOLDS, UNCHOSEN, describe_rows, inner_scores
from probe.science import intervals
from probe.science.regression import bootstrap_intervals, r2, spearman
from probe.science.regression import score as score  # run.py scores regression fits with it

NOT_APPLICABLE = ("accuracy, macro-F1, per-sense recall, the confusion matrix and McNemar's paired tests are "
                  "for classes; a regression run scores R² and Spearman's correlation")


def numeric_labels(rows_table, index=None) -> np.ndarray:
    """The rows' labels as float64 (the loader checked that each is a number)."""
    labels = np.asarray(rows_table["label"], dtype=object)
    if index is not None:
        labels = labels[np.asarray(index)]
    return labels.astype(np.float64)


def mean_predictor():
    from sklearn.dummy import DummyRegressor

    return DummyRegressor(strategy="mean")


def layer_result(config, scores: dict, split, position: str, layer: int) -> LayerResult:
    """One layer's row from its fits: the probe's scores and its controls'."""
    key = (split.name, position, layer)
    probe = scores[(*key, "probe")]
    row = LayerResult(layer=layer, position=position, subset=split.name,
                      **{name: probe[name] for name in ("r2", "r2_std", "fold_r2s", "spearman", "predictions")})
    for control in ("shuffled", "random_weights"):
        if control in config.controls:
            setattr(row, f"{control}_r2", scores[(*key, control)]["r2"])
            setattr(row, f"{control}_spearman", scores[(*key, control)]["spearman"])
    return row


def baseline(scores: dict) -> Baseline:
    return Baseline(r2=scores["r2"], spearman=scores["spearman"])


# ---------------------------------------------------------------- statistics


def finish(results, run, scores: dict) -> None:
    """Intervals, the nested best layer and the statistics' description, from the run's fit ``scores``."""
    config, table = run.config, run.rows.table
    groups = describe_rows(results, run)
    y = numeric_labels(table)
    splits = {split.name: split for split in run.splits}
    for row in results.rows:
        row.predictions = spread(row.predictions, splits[row.subset].index, len(table))
        cis = row_intervals(y, row.predictions, groups, config.seed)
        row.r2_ci, row.spearman_ci = cis["r2"], cis["spearman"]
    for split in run.splits:
        if (split.name, "mean") in scores:
            predicted = spread(scores[(split.name, "mean")]["predictions"], split.index, len(table))
            results.baseline("mean", split.name).r2_ci = row_intervals(y, predicted, groups, config.seed)["r2"]
    results.statistics = {"interval": interval_method(groups is not None), "paired": [],
                          "not_applicable": NOT_APPLICABLE}
    results.best_layer = []
    for (position, subset), series in results.series().items():
        best = nested_best(series, splits[subset], scores, y, groups, config.seed)
        results.best_layer.append({"position": position, "subset": subset, **(best or UNCHOSEN)})


def spread(predictions, index, n_rows: int) -> list[float | None]:
    """A subset's predictions (one per subset row, NaN: not scored) over the dataset's rows (None: not scored)."""
    spread_out: list[float | None] = [None] * n_rows
    for row, value in zip(np.asarray(index).tolist(), predictions):
        spread_out[row] = None if value is None or np.isnan(value) else float(value)
    return spread_out


def scored(predictions: list[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(the dataset rows that were scored, their predictions)."""
    rows = np.asarray([i for i, value in enumerate(predictions) if value is not None], dtype=np.int64)
    return rows, np.asarray([predictions[i] for i in rows.tolist()], dtype=np.float64)


def row_intervals(y: np.ndarray, predictions: list[float | None], groups, seed: int) -> dict:
    """The 95 % intervals of R² and Spearman of one set of stored predictions."""
    rows, predicted = scored(predictions)
    row_groups = None if groups is None else [groups[i] for i in rows.tolist()]
    return bootstrap_intervals(y[rows], predicted, row_groups, seed=seed)


def interval_method(grouped: bool) -> str:
    how = ", rows of one group drawn together" if grouped else ""
    return (f"95% percentile bootstrap of R² and Spearman over the pooled out-of-fold rows "
            f"({intervals.RESAMPLES} resamples{how})")


def nested_best(series, split, scores: dict, y: np.ndarray, groups, seed: int) -> dict | None:
    """In each outer training part, the layer with the highest inner R² (the lowest on a tie); the outer
    test rows scored by that layer's predictions, pooled: R² and Spearman with their intervals."""
    layers = [row.layer for row in series]
    inner = inner_scores(series, split, scores, "r2")
    if not inner:
        return None
    n_outer = len(inner[layers[0]])
    chosen = [max(layers, key=lambda layer: (np.nan_to_num(inner[layer][outer], nan=-np.inf), -layer))
              for outer in range(n_outer)]
    by_layer = {row.layer: row for row in series}
    predictions: list[float | None] = [None] * len(y)
    for (_, test), layer in zip(split.folds, chosen):
        for row in np.asarray(split.index)[test].tolist():
            predictions[row] = by_layer[layer].predictions[row]
    rows, predicted = scored(predictions)
    counts = Counter(chosen)
    return {"layer": counts.most_common(1)[0][0], "chosen": {str(k): v for k, v in sorted(counts.items())},
            "per_outer_fold": chosen, "r2": r2(y[rows], predicted), "spearman": spearman(y[rows], predicted),
            **{f"{name}_ci": value for name, value in row_intervals(y, predictions, groups, seed).items()},
            "inner_folds": INNER_FOLDS}
