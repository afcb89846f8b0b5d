"""Statistics by default, on a run's fits (the pure math is in probe/science/intervals.py):

- every layer row's 95 % interval (``accuracy_ci``): a group bootstrap over the rows' pooled out-of-fold
  correctness under cross-validation; Wilson on a fixed split's test rows (a group bootstrap when they have
  groups);
- the best layer chosen without peeking (``best_layer``): in each outer training part, inner folds pick a
  layer; the outer test part scores that pick;
- permutation p-values adjusted across the layers of each position × subset (Holm and Benjamini–Hochberg);
- paired tests inside the run: the layer with the highest accuracy vs the first layer and vs the runner-up.

Each row's correctness is stored in results.json as one character per dataset row (``correct``: 1 right,
0 wrong, ``.`` not scored), so ``probe compare RUN_A RUN_B`` can pair two runs' rows later.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from probe.errors import UserError
from probe.pipeline.context import column
from probe.pipeline.results import baseline_key
from probe.science import intervals

INNER_FOLDS = 3  # the nested selection's inner folds within each outer training part
UNCHOSEN = {"layer": None, "reason": f"an outer training part has too few rows or groups of some label for "
                                     f"{INNER_FOLDS} inner folds"}
RIGHT, WRONG, UNSCORED = "1", "0", "."


# ---------------------------------------------------------------- correctness, stored


def aligned_correct(correct: str, index: np.ndarray, n_rows: int) -> str:
    """A subset's correctness string (one character per subset row) spread over the dataset's rows."""
    spread = [UNSCORED] * n_rows
    for row, mark in zip(np.asarray(index).tolist(), correct):
        spread[row] = mark
    return "".join(spread)


def scored(correct: str) -> tuple[np.ndarray, np.ndarray]:
    """(the dataset rows that were scored, whether each was right) from a stored correctness string."""
    marks = np.frombuffer(correct.encode("ascii"), dtype=np.uint8)
    rows = np.flatnonzero(marks != ord(UNSCORED))
    return rows, marks[rows] == ord(RIGHT)


def dataset_digest(texts, spans, labels) -> str:
    """What must match for two runs' rows to pair up: each row's text, target span and label, in order."""
    digest = hashlib.sha256()
    for text, (start, end), label in zip(texts, spans, labels):
        digest.update(f"{start}:{end}:{label}:{text}\n".encode())
    return digest.hexdigest()[:20]


def describe_rows(results, run) -> list[int] | None:
    """Record in ``results.dataset`` what pairs its rows with another run's (their digest) and their groups,
    which every interval resamples by; returns the groups (``group_ids``)."""
    table = run.rows.table
    results.dataset.digest = dataset_digest(table["text"], run.rows.spans, table["label"])
    results.dataset.groups = group_ids(table["group"])
    return results.dataset.groups


def group_ids(groups) -> list[int] | None:
    """Each dataset row's group as a small integer (None rows get one each); None when no row has a group."""
    if not any(group is not None for group in groups):
        return None
    return intervals.group_ids(list(groups), len(groups)).tolist()


# ---------------------------------------------------------------- one row's interval


def interval(correct: str, groups: list[int] | None, fixed_split: bool, seed: int) -> list[float]:
    """The 95 % interval of a row's accuracy from its stored correctness (see the module's docstring)."""
    rows, right = scored(correct)
    row_groups = None if groups is None else [groups[i] for i in rows]
    if fixed_split and row_groups is None:
        return list(intervals.wilson_interval(int(right.sum()), len(right)))
    return list(intervals.bootstrap_interval(right, row_groups, seed=seed))


def difference_interval(correct: str, other: str, groups: list[int] | None, seed: int) -> list[float]:
    """95 % interval of the accuracy difference of two fits scored on the same rows (``correct`` −
    ``other``): a paired bootstrap of each row's difference, rows of one group drawn together."""
    rows, right = scored(correct)
    other_rows, other_right = scored(other)
    if not np.array_equal(rows, other_rows):
        raise ValueError("the two fits were scored on different rows")
    row_groups = None if groups is None else [groups[i] for i in rows]
    return list(intervals.bootstrap_interval(right.astype(float) - other_right, row_groups, seed=seed))


def interval_method(fixed_split: bool, grouped: bool) -> str:
    if fixed_split and not grouped:
        return "95% Wilson score interval on the test rows"
    rows = "the test rows" if fixed_split else "the pooled out-of-fold rows"
    how = ", rows of one group drawn together" if grouped else ""
    return f"95% percentile bootstrap over {rows} ({intervals.RESAMPLES} resamples{how})"


# ---------------------------------------------------------------- nested choice of the best layer


def nested_tasks(config, rows, features, splits, layers: list[int]) -> list:
    """The inner fits: for each subset × position × outer fold × layer, INNER_FOLDS folds inside the outer
    training rows (keys ``(subset, position, layer, "inner", outer fold)``). A subset too small for inner
    folds gets none, and its best layer is left unchosen."""
    from probe.science.probes import FitTask

    found = []
    for split in splits:
        plan = inner_folds(split, _subset_groups(rows, split), config.seed, regression=config.task == "regression")
        if plan is None:
            continue
        for position in config.positions:
            for layer in layers:
                X = features.main.rows(position, layer, split.index)
                for outer, inner in enumerate(plan):
                    found.append(FitTask((split.name, position, layer, "inner", outer), X, split.y, inner,
                                         metrics=False))
    return found


def inner_folds(split, groups: list | None, seed: int, regression: bool = False) -> list[list] | None:
    """Per outer fold, the inner (train, test) folds over the outer training rows, as subset row numbers;
    stratified (not for ``regression``'s numbers), and grouped when the rows have groups (``groups``: the
    subset rows'). None when the outer training rows can't be split so."""
    from probe.science.probes import ProbeError, folds
    from probe.science.regression import splitter_name

    splitter = splitter_name(groups is not None) if regression else None
    plan = []
    for train, _ in split.folds:
        inner_groups = None if groups is None else [groups[i] for i in train]
        try:
            inner = folds(split.y[train], inner_groups, INNER_FOLDS, seed, splitter=splitter)
        except ProbeError:
            return None
        plan.append([(train[inner_train], train[inner_test]) for inner_train, inner_test in inner])
    return plan


def choose_layers(inner_accuracy: dict[int, list[float]], layers: list[int]) -> list[int]:
    """Per outer fold, the layer with the highest inner accuracy (the lowest such layer on a tie)."""
    n_outer = len(next(iter(inner_accuracy.values())))
    return [max(layers, key=lambda layer: (inner_accuracy[layer][outer], -layer)) for outer in range(n_outer)]


def nested_best(rows_by_layer: dict, split, chosen: list[int], groups, fixed_split: bool, seed: int) -> dict:
    """The outer test rows scored by each outer fold's chosen layer, pooled: accuracy and interval."""
    right = np.zeros(len(split.y), dtype=bool)
    tested = np.zeros(len(split.y), dtype=bool)
    for (_, test), layer in zip(split.folds, chosen):
        _, layer_right = scored_subset(rows_by_layer[layer].correct, split.index)
        right[test], tested[test] = layer_right[test], True
    marks = "".join(RIGHT if r else WRONG if t else UNSCORED for r, t in zip(right, tested))
    correct = aligned_correct(marks, split.index, len(next(iter(rows_by_layer.values())).correct))
    counts = Counter(chosen)
    return {"layer": counts.most_common(1)[0][0], "chosen": {str(k): v for k, v in sorted(counts.items())},
            "per_outer_fold": chosen, "accuracy": float(right[tested].mean()),
            "accuracy_ci": interval(correct, groups, fixed_split, seed), "inner_folds": INNER_FOLDS}


def scored_subset(correct: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whether each subset row was scored, whether it was right), in subset order."""
    marks = np.frombuffer(correct.encode("ascii"), dtype=np.uint8)[np.asarray(index)]
    return marks != ord(UNSCORED), marks == ord(RIGHT)


def _subset_groups(rows, split) -> list | None:
    every = column(rows.table, "group")
    groups = [every[i] for i in np.asarray(split.index).tolist()]
    return groups if any(group is not None for group in groups) else None


# ---------------------------------------------------------------- all of it, on a run's results


def finish(results, run, scores: dict) -> None:
    """Fill ``results`` with the statistics above, from the run's fit ``scores`` (probe_layers' own)."""
    from probe.pipeline.evaluation import FixedSplit

    config, n_rows = run.config, len(run.rows.table)
    fixed = isinstance(config.protocol, FixedSplit)
    groups = describe_rows(results, run)
    splits = {split.name: split for split in run.splits}
    for row in results.rows:
        row.correct = aligned_correct(row.correct, splits[row.subset].index, n_rows)
        row.accuracy_ci = interval(row.correct, groups, fixed, config.seed)
        control = scores.get((row.subset, row.position, row.layer, "control_task"))
        if control is not None:
            control_correct = aligned_correct(control["correct"], splits[row.subset].index, n_rows)
            row.control_task_selectivity_ci = difference_interval(row.correct, control_correct, groups, config.seed)
    for split in run.splits:
        if (split.name, "majority") in scores:
            majority = aligned_correct(scores[(split.name, "majority")]["correct"], split.index, n_rows)
            results.baselines[baseline_key("majority", split.name)].accuracy_ci = interval(majority, groups, fixed, config.seed)
    results.statistics = {"interval": interval_method(fixed, groups is not None), "paired": []}
    results.best_layer = []
    for (position, subset), series in results.series().items():
        first = results.baselines.get(baseline_key(f"layer{series[0].layer}_{position}", subset))
        if first is not None:
            first.accuracy_ci = series[0].accuracy_ci
        _correct_p_values(series)
        results.statistics["paired"] += paired_in_run(series, groups, config.seed)
        best = _nested(series, splits[subset], scores, groups, fixed, config.seed)
        results.best_layer.append({"position": position, "subset": subset, **(best or UNCHOSEN)})


def inner_scores(series, split, scores: dict, metric: str) -> dict[int, list[float]]:
    """Per layer of ``series``, its inner folds' ``metric`` in each outer training part, in order ({} when the
    run chose no layer on inner folds)."""
    position, layers = series[0].position, [row.layer for row in series]
    inner = {layer: [] for layer in layers}
    for layer in layers:
        outer = 0
        while (split.name, position, layer, "inner", outer) in scores:
            inner[layer].append(scores[(split.name, position, layer, "inner", outer)][metric])
            outer += 1
    return inner if inner[layers[0]] else {}


def _nested(series, split, scores: dict, groups, fixed: bool, seed: int) -> dict | None:
    layers = [row.layer for row in series]
    inner = inner_scores(series, split, scores, "accuracy")
    if not inner:
        return None
    chosen = choose_layers(inner, layers)
    return nested_best({row.layer: row for row in series}, split, chosen, groups, fixed, seed)


def _correct_p_values(series) -> None:
    """Holm and Benjamini–Hochberg over the layers of one position × subset (the family a reader scans)."""
    tested = [row for row in series if row.permutation_p_value is not None]
    if not tested:
        return
    p_values = [row.permutation_p_value for row in tested]
    for row, holm, bh in zip(tested, intervals.holm(p_values), intervals.benjamini_hochberg(p_values)):
        row.permutation_p_holm, row.permutation_p_bh = holm, bh


def paired_in_run(series, groups, seed: int) -> list[dict]:
    """The layer with the highest accuracy against the first layer and against the runner-up."""
    if len(series) < 2:
        return []
    ranked = sorted(series, key=lambda row: (-row.accuracy, row.layer))
    best, runner_up = ranked[0], ranked[1]
    against = [series[0]] if series[0] is not best else []
    against += [runner_up] if runner_up is not series[0] else []
    return [{"position": best.position, "subset": best.subset, "a": f"layer {best.layer}",
             "b": f"layer {other.layer}", **paired(best.correct, other.correct, groups, seed)}
            for other in against]


def paired(correct_a: str, correct_b: str, groups, seed: int) -> dict:
    """The paired test on the rows both scored (see intervals.paired_test)."""
    rows_a, right_a = scored(correct_a)
    rows_b, right_b = scored(correct_b)
    if len(correct_a) != len(correct_b) or not np.array_equal(rows_a, rows_b):
        raise ValueError("the two scored different rows, so they can't be paired")
    row_groups = None if groups is None else [groups[i] for i in rows_a]
    return intervals.paired_test(right_a, right_b, row_groups, seed=seed)


# ---------------------------------------------------------------- two runs on the same rows


class UnpairedRuns(UserError, ValueError):
    """Two runs whose rows can't be paired (different data, or written before rows' results were stored)."""


def compare_runs(a, b, seed: int = 0) -> dict:
    """Paired tests, layer by layer, between two runs' Results on the same rows (two models, two attention
    paths, two settings): for each position × subset × layer both have, A's accuracy minus B's with its
    paired interval and McNemar's exact p-value."""
    names = (_run_name(a), _run_name(b))
    numeric = [name for results, name in zip((a, b), names) if results.task == "regression"]
    if numeric:
        raise UnpairedRuns(f"{numeric[0]} is a regression run: probe compare pairs rows by right or wrong "
                           "(McNemar), which numbers don't have; compare the runs' r2_ci and spearman_ci intervals "
                           "in their results.json or summary.md instead")
    for results, name in zip((a, b), names):
        if results.dataset.digest is None or any(row.correct is None for row in results.rows):
            raise UnpairedRuns(f"{name} stores no per-row results (it was written before probe kept them); "
                               "run it again to compare it row by row")
    if a.dataset.digest != b.dataset.digest:
        raise UnpairedRuns(f"the two runs probed different rows (dataset {a.dataset.name!r}, {a.dataset.rows} rows, "
                           f"digest {a.dataset.digest} vs {b.dataset.name!r}, {b.dataset.rows} rows, digest "
                           f"{b.dataset.digest}): a paired test needs the same rows in the same order")
    theirs = {(row.position, row.subset, row.layer): row for row in b.rows}
    tests = []
    for row in a.rows:
        other = theirs.get((row.position, row.subset, row.layer))
        if other is None:
            continue
        try:
            test = paired(row.correct, other.correct, a.dataset.groups, seed)
        except ValueError as error:
            raise UnpairedRuns(f"layer {row.layer}, {row.position}, {row.subset} rows: {error} "
                               "(different evaluation protocols?)") from None
        tests.append({"position": row.position, "subset": row.subset, "layer": row.layer,
                      "accuracy_a": row.accuracy, "accuracy_b": other.accuracy, **test})
    if not tests:
        raise UnpairedRuns(f"{names[0]} and {names[1]} share no position × subset × layer to compare")
    return {"a": names[0], "b": names[1], "dataset_digest": a.dataset.digest, "rows_match": True,
            "interval": (a.statistics or {}).get("interval", ""), "tests": tests}


def _run_name(results) -> str:
    where = f" ({results.run_dir})" if results.run_dir else ""
    return f"{results.experiment} on {results.model.name}{where}"
