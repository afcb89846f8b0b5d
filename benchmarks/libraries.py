"""probe's own pieces against the library that could do their job (docs/libraries.md quotes this):

    python benchmarks/libraries.py [--folds 2000] [--tasks 155] [--permutations 20]

* metrics: probe.science.probes.score (fold accuracy, macro F1, confusion, recall from one confusion matrix)
  against scikit-learn's accuracy_score, f1_score and confusion_matrix on the same folds: equal numbers, time.
* fit cache: a rerun's lookup of --tasks cached cross-validations (SmolLM2's mole: 155 of 153 x 576), by
  probe.store.caches against joblib.Memory: time per rerun.
* permutation test: one layer's null by probe (within-group permutations, the real labels' folds, one joblib
  batch) against scikit-learn's permutation_test_score on the same folds and groups: time, and whether the
  null is the same.
Medians of --repeats, seconds, in this process (say how busy the machine was).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def data(rows: int = 191, features: int = 576, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    X = (rng.standard_normal((rows, features)) + y[:, None] * 0.3).astype(np.float32)
    groups = rng.integers(0, rows // 4, rows)
    return X, y, groups


def metrics(n_folds: int, repeats: int) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    from probe.science.probes import score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    fold_list = [(np.arange(0, 32), np.arange(32, 40))] * n_folds
    predictions = [rng.integers(0, 3, 8) for _ in range(n_folds)]

    def by_sklearn():
        accuracies, f1s, confusion = [], [], 0
        for (_, test), predicted in zip(fold_list, predictions):
            accuracies.append(accuracy_score(y[test], predicted))
            f1s.append(f1_score(y[test], predicted, average="macro", zero_division=0))
            confusion = confusion + confusion_matrix(y[test], predicted, labels=[0, 1, 2])
        return float(np.mean(accuracies)), float(np.mean(f1s))

    ours = score(y, fold_list, predictions)
    same = np.isclose(ours["accuracy"], by_sklearn()[0]) and np.isclose(ours["macro_f1"], by_sklearn()[1])
    return {"probe": timed(lambda: score(y, fold_list, predictions), repeats), "library": timed(by_sklearn, repeats),
            "same numbers": bool(same)}


def fit_cache(n_tasks: int, repeats: int) -> dict:
    from joblib import Memory

    from probe.science.probes import folds, logistic_probe
    from probe.store import caches

    X, y, groups = data(153)
    fold_list = folds(y, groups, 5, 0)
    predictions = [np.zeros(len(test), dtype=y.dtype) for _, test in fold_list]
    tasks = [(X + i, y) for i in range(n_tasks)]  # distinct matrices, as layers are
    with tempfile.TemporaryDirectory() as ours_dir, tempfile.TemporaryDirectory() as theirs_dir:
        ours_dir = Path(ours_dir)

        def probe_lookup():
            seen = {}
            return [caches.load(ours_dir, caches.fit_key(logistic_probe(), Xi, yi, fold_list, seen))
                    for Xi, yi in tasks]

        for Xi, yi in tasks:
            caches.save(ours_dir, caches.fit_key(logistic_probe(), Xi, yi, fold_list), predictions)
        memory = Memory(theirs_dir, verbose=0)

        @memory.cache
        def cross_validated(probe, X, y, fold_list):
            return predictions

        def joblib_lookup():
            return [cross_validated(logistic_probe(), Xi, yi, fold_list) for Xi, yi in tasks]

        joblib_lookup()  # fills joblib's cache
        assert all(found is not None for found in probe_lookup())
        return {"probe": timed(probe_lookup, repeats), "library": timed(joblib_lookup, repeats)}


def permutation(n_permutations: int, repeats: int) -> dict:
    from sklearn.model_selection import permutation_test_score

    from probe.science import permutation as perm
    from probe.science.probes import evaluate, folds, logistic_probe

    X, y, groups = data()
    fold_list = folds(y, groups, 5, 0)
    permuted = perm.within_group_permutations(y, list(groups), n_permutations, seed=0)

    def by_probe():
        scores = evaluate(perm.tasks(("layer",), X, permuted, fold_list), logistic_probe, n_jobs=1)
        return sorted(scores[("layer", perm.CONTROL, i)]["accuracy"] for i in range(n_permutations))

    def by_sklearn():
        _, null, _ = permutation_test_score(logistic_probe(), X, y, groups=groups, cv=fold_list,
                                            n_permutations=n_permutations, random_state=0, n_jobs=1)
        return sorted(null.tolist())

    return {"probe": timed(by_probe, repeats), "library": timed(by_sklearn, repeats),
            "same numbers": by_probe() == by_sklearn()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=155)
    parser.add_argument("--permutations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {f"metrics, {args.folds} folds": metrics(args.folds, args.repeats),
            f"fit cache lookup, {args.tasks} tasks": fit_cache(args.tasks, args.repeats),
            f"permutation test, {args.permutations} permutations": permutation(args.permutations, args.repeats)}
    print("| job | probe (s) | library (s) | same numbers |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['probe']:.3f} | {row['library']:.3f} | {row.get('same numbers', '')} |")


if __name__ == "__main__":
    main()
