"""Linear probes on one layer's vectors, cross-validated, with a majority baseline and a shuffled-label control.

Everything is deterministic given ``seed``: the fold split, the label permutation of the control, and the
probe (newton-cg is deterministic). Folds keep rows of one ``group`` together; rows whose group is None are
groups of their own. Results are plain dicts of floats and lists, ready for JSON.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.errors import UserError

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


class ProbeError(UserError, ValueError):
    """The labels or groups can't be split into the requested folds."""


def logistic_probe(seed: int = 0, C: float = 0.1, max_iter: int = 2000, scale: bool = True) -> Pipeline:
    """Standardise the features (``scale``), then an L2 logistic regression (newton-cg; multinomial for >2
    labels). With ``scale: false`` it is a plain ``LogisticRegression(C=C, solver="newton-cg")``: what a
    script that does not scale gets (its numbers differ from the scaled probe's).

    C=0.1, not scikit-learn's 1.0: with a few hundred rows and hundreds of dimensions the senses are
    linearly separable, and a weakly regularised fit spends thousands of iterations growing its weights
    (measured on SmolLM2's layer 12 for mole: same accuracy within 0.01, 16x faster).

    newton-cg, not scikit-learn's lbfgs: measured on SmolLM2's mole vectors (155 fits, 4 senses, 153 rows ×
    576 dimensions), it took 1.4 s where lbfgs took 3.4 s, and it stops nearer the optimum: against fits run
    to tol=1e-10 (newton-cg and newton-cholesky agree there), its objective is 4e-6 above the minimum
    (median) where lbfgs's is 3e-5, and 6 of 5,952 out-of-fold predictions differ where lbfgs's 136 do.
    """
    if not isinstance(scale, bool):
        raise ValueError(f"scale must be true or false, got {scale!r}")
    regression = LogisticRegression(C=C, solver="newton-cg", max_iter=max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), regression) if scale else make_pipeline(regression)


class CosineCentroids(ClassifierMixin, BaseEstimator):
    """Each class's centroid is the mean of its training rows as they are; a row takes the class whose
    centroid has the highest cosine similarity with it (the sense-centroid rule of CoarseWSD-20's
    1-nearest-neighbour baseline, Loureiro et al. 2021)."""

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([X[y == label].mean(axis=0) for label in self.classes_])
        return self

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        lengths = np.linalg.norm(X, axis=1, keepdims=True) * np.linalg.norm(self.centroids_, axis=1)
        cosine = (X @ self.centroids_.T) / np.where(lengths == 0, 1.0, lengths)
        return self.classes_[np.argmax(cosine, axis=1)]


class StreamingLogistic(ClassifierMixin, BaseEstimator):
    """A logistic regression fitted by stochastic gradient descent a block of rows at a time, for matrices
    larger than memory: a first pass learns each feature's mean and spread (``scale``), then ``epochs``
    passes feed the blocks, in an order shuffled by ``seed``, to ``SGDClassifier(loss="log_loss")``'s
    ``partial_fit``. Only one block is in memory at once; a memory-mapped matrix's pages are read through a
    map of the block alone (probe.store.matrices.read_rows). An approximation of the exact probe
    (``logreg``): its accuracy is close, not equal. Deterministic given ``seed`` and ``block_rows``."""

    def __init__(self, seed: int = 0, alpha: float = 1e-4, epochs: int = 5, block_rows: int = 4096,
                 scale: bool = True):
        self.seed, self.alpha, self.epochs, self.block_rows, self.scale = seed, alpha, epochs, block_rows, scale

    def fit(self, X, y):
        return self.fit_rows(X, np.asarray(y), np.arange(len(y)))

    def fit_rows(self, X, y: np.ndarray, rows: np.ndarray):
        """Fit on ``X[rows]``, ``y[rows]``, reading ``X`` a block at a time (``X`` may be memory-mapped)."""
        from sklearn.linear_model import SGDClassifier

        from probe.store.matrices import blocks_of, read_rows

        blocks = blocks_of(np.asarray(rows), self.block_rows)
        self.classes_ = np.unique(np.asarray(y)[rows])
        self.scaler_ = StandardScaler(with_mean=self.scale, with_std=self.scale)
        for block in blocks:
            self.scaler_.partial_fit(read_rows(X, block))
        self.sgd_ = SGDClassifier(loss="log_loss", alpha=self.alpha, random_state=self.seed)
        order = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for at in order.permutation(len(blocks)):
                block = blocks[at]
                self.sgd_.partial_fit(self.scaler_.transform(read_rows(X, block)), np.asarray(y)[block],
                                      classes=self.classes_)
        return self

    def predict(self, X):
        return self.predict_rows(X, np.arange(len(X)))

    def predict_rows(self, X, rows: np.ndarray) -> np.ndarray:
        """Predictions for ``X[rows]``, a block at a time."""
        from probe.store.matrices import blocks_of, read_rows

        predicted = [self.sgd_.predict(self.scaler_.transform(read_rows(X, block)))
                     for block in blocks_of(np.asarray(rows), self.block_rows)]
        return np.concatenate(predicted) if predicted else np.empty(0, dtype=self.classes_.dtype)


def folds(y: Sequence, groups: Sequence | None, n_folds: int, seed: int, splitter=None) -> list[Fold]:
    """Stratified folds; StratifiedGroupKFold when any group id is set, so a group never straddles train/test.

    ``splitter``: a scikit-learn splitter to use instead — an object with ``split(X, y, groups)``, or the
    name of one in probe.pipeline.evaluation.SPLITTERS, made with ``n_folds`` splits, shuffled with ``seed``."""
    y = np.asarray(y)
    grouped = groups is not None and any(group is not None for group in groups)
    group_ids = _group_ids(groups) if grouped else None
    if splitter is None or isinstance(splitter, str):
        if splitter is None or splitter.startswith("Stratified"):
            _check_label_counts(y, n_folds)
        if grouped or splitter in ("StratifiedGroupKFold", "GroupKFold"):
            n_groups = len(set(group_ids.tolist())) if grouped else len(y)
            if n_groups < n_folds:
                raise ProbeError(f"only {n_groups} distinct groups, fewer than n_folds={n_folds}; use fewer folds")
        splitter = _named_splitter(splitter, grouped, n_folds, seed)
    takes_groups = "Group" in type(splitter).__name__  # StratifiedGroupKFold, GroupKFold, LeaveOneGroupOut…
    if takes_groups and group_ids is None:
        group_ids = np.arange(len(y))  # each row a group of its own
    arguments = (np.zeros(len(y)), y, group_ids) if takes_groups else (np.zeros(len(y)), y)
    try:
        return [(np.asarray(train), np.asarray(test)) for train, test in splitter.split(*arguments)]
    except ValueError as error:
        raise ProbeError(f"{type(splitter).__name__} can't split these rows: {error}") from None


def _named_splitter(name: str | None, grouped: bool, n_folds: int, seed: int):
    """A scikit-learn splitter by class name; None: StratifiedGroupKFold with groups, else StratifiedKFold."""
    from sklearn import model_selection

    if name is None:
        name = "StratifiedGroupKFold" if grouped else "StratifiedKFold"
    return getattr(model_selection, name)(n_splits=n_folds, shuffle=True, random_state=seed)


def _check_label_counts(y: np.ndarray, n_folds: int) -> None:
    """Every label needs a row in each test fold, so at least n_folds rows."""
    if n_folds < 2:
        raise ProbeError(f"n_folds must be at least 2, got {n_folds}")
    too_few = {label: count for label, count in Counter(y.tolist()).items() if count < n_folds}
    if too_few:
        listed = ", ".join(f"{label!r} ({count})" for label, count in sorted(too_few.items(), key=str))
        raise ProbeError(f"label(s) with fewer rows than n_folds={n_folds}: {listed}")


def _group_ids(groups: Sequence) -> np.ndarray:
    """Integer group ids; each row with group None gets an id of its own."""
    new_id = itertools.count()
    named: dict[Any, int] = {}
    ids = []
    for group in groups:
        if group is None:
            ids.append(next(new_id))
        else:
            if group not in named:
                named[group] = next(new_id)
            ids.append(named[group])
    return np.asarray(ids)


def cross_validate(
    X: np.ndarray,
    y: Sequence,
    groups: Sequence | None,
    make_probe: Callable[[], Any],
    n_folds: int = 5,
    seed: int = 0,
    metrics: dict[str, Callable] | None = None,
    cv=None,
) -> dict[str, Any]:
    """Fit a fresh ``make_probe()`` per fold; fold-averaged accuracy/F1 and pooled out-of-fold recall/confusion.

    ``metrics``: extra ``fn(y_true, y_pred, labels)`` computed on the pooled out-of-fold predictions.
    ``cv``, as in scikit-learn: a number of folds (instead of ``n_folds``), a splitter object or its class
    name (see ``folds``); None: ``n_folds`` stratified, grouped when there are groups.
    """
    X, y = _checked(X, y)
    if isinstance(cv, int) and not isinstance(cv, bool):
        n_folds, cv = cv, None
    task = FitTask("one", X, y, folds(y, groups, n_folds, seed, splitter=cv))
    return evaluate([task], make_probe, n_jobs=1, metrics=metrics)["one"]


@dataclass(frozen=True)
class FitTask:
    """One cross-validation to run: ``key`` names it in the answer; ``folds`` are computed by the caller,
    once per set of labels, however many layers and controls share them."""

    key: Hashable
    X: np.ndarray
    y: np.ndarray
    folds: list[Fold]
    metrics: bool = True  # whether the extra metrics are computed for this task
    make_probe: Callable[[], Any] | None = None  # instead of evaluate()'s (the majority baseline's dummy)


def evaluate(
    tasks: Sequence[FitTask],
    make_probe: Callable[[], Any],
    *,
    n_jobs: int | None = None,
    metrics: dict[str, Callable] | None = None,
    progress: Callable[[int], None] | None = None,
    cache: Path | None = None,
    scorer: Callable[..., dict[str, Any]] | None = None,
) -> dict[Hashable, dict[str, Any]]:
    """Every (task × fold) fit in parallel with joblib (``n_jobs``: None = all cores, or this process for a
    batch too small to pay for starting workers; see LOKY_WORTH), each fit's BLAS held
    to one thread: on a few cores, parallel fits beat threaded BLAS inside one small fit by far, and
    results do not depend on ``n_jobs``. Probes are made here, in this process, so a probe factory may
    keep state; the fitted estimators stay in the workers, only predictions come back. ``scorer``: how
    predictions become scores (``score``'s signature; None: ``score``, for classes)."""
    from sklearn import config_context

    predictions = fit_all(tasks, make_probe, n_jobs=n_jobs, progress=progress, cache=cache)
    # Scoring thousands of folds: sklearn's argument checks cost more than the metrics; the math is the same.
    with config_context(skip_parameter_validation=True, assume_finite=True):
        return {task.key: (scorer or score)(task.y, task.folds, predictions[task.key],
                                            metrics if task.metrics else None)
                for task in tasks}


def fit_all(tasks: Sequence[FitTask], make_probe: Callable[[], Any], *, n_jobs: int | None = None,
            progress: Callable[[int], None] | None = None,
            cache: Path | None = None) -> dict[Hashable, list[np.ndarray]]:
    """Each task's test-fold predictions, fold by fold: every (task × fold) fit is one joblib job.
    With ``cache`` (a folder), a task whose vectors, labels, folds and probe were seen before is not refit."""
    from joblib import delayed

    from probe.scale.workers import run_parallel
    from probe.store import caches

    answers: dict[Hashable, list[np.ndarray]] = {}
    jobs, keys, hashed = [], {}, {}
    for task in tasks:
        probes = [(task.make_probe or make_probe)() for _ in task.folds]
        keys[task.key] = caches.fit_key(probes[0], task.X, task.y, task.folds, hashed) if cache else None
        cached = caches.load(cache, keys[task.key]) if keys[task.key] else None
        if cached is not None:
            answers[task.key] = cached
            if progress:
                progress(len(task.folds))
            continue
        answers[task.key] = []
        jobs += [(task, probe, train, test) for probe, (train, test) in zip(probes, task.folds)]
    if not jobs:
        return answers
    fits = [delayed(_fit_predict)(probe, task.X, task.y, train, test) for task, probe, train, test in jobs]
    n_jobs = n_jobs_for(n_jobs, sum(len(train) * task.X.shape[1] for task, _, train, _ in jobs))
    for predicted, (task, _, _, _) in zip(run_parallel(fits, n_jobs), jobs):
        answers[task.key].append(predicted)
        if progress:
            progress(1)
        if keys[task.key] and len(answers[task.key]) == len(task.folds):
            caches.save(cache, keys[task.key], answers[task.key])
    return answers


# Fits go to joblib's worker processes only when there is enough of them: starting the workers costs about
# half a second on 2 cores (each imports scikit-learn), and threads gain nothing (the GIL). The measure is
# training rows × features summed over fits; SmolLM2's mole probes (155 fits of 153 × 576) are 1.4e7 and
# took 1.3 s in this process, 1.3 s on 2 threads, 1.7 s on 2 worker processes. It never changes a result.
LOKY_WORTH = 3e7


def n_jobs_for(n_jobs: int | None, work: float) -> int:
    """``n_jobs`` when asked for; by default all cores when ``work`` (training rows × features, summed over the
    fits) pays for starting the worker processes (LOKY_WORTH), else this process."""
    return n_jobs if n_jobs is not None else -1 if work > LOKY_WORTH else 1


def _fit_predict(probe, X, y, train, test) -> np.ndarray:
    from probe.scale import workers

    with workers.one_thread():
        if hasattr(probe, "fit_rows"):  # a streaming probe reads its rows from X itself, a block at a time
            return probe.fit_rows(X, y, train).predict_rows(X, test)
        return probe.fit(X[train], y[train]).predict(X[test])


def score(y: np.ndarray, fold_list: list[Fold], fold_predictions: list[np.ndarray],
          metrics: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Fold-averaged accuracy/F1 and pooled out-of-fold recall, confusion and extra metrics."""
    labels = np.unique(y)
    predicted = np.empty_like(y)
    tested = np.zeros(len(y), dtype=bool)  # a fixed split scores only its test rows; k folds score every row
    fold_accuracies, fold_f1s = [], []
    for (train, test), fold_predicted in zip(fold_list, fold_predictions):
        predicted[test], tested[test] = fold_predicted, True
        fold_accuracies.append(float(np.mean(y[test] == predicted[test])))  # accuracy_score
        fold_f1s.append(macro_f1(y[test], predicted[test], labels))
    # Each row's out-of-fold correctness (1 right, 0 wrong, . not scored): for intervals and paired tests.
    correct = "".join(np.where(tested, np.where(y == predicted, "1", "0"), ".").tolist())
    y, predicted = y[tested], predicted[tested]
    confusion = confusion_counts(y, predicted, labels)
    true_counts = np.bincount(np.searchsorted(labels, y), minlength=len(labels))  # rows of each label
    recalls = _ratio(np.diag(confusion), true_counts)
    extra = {name: fn(y, predicted, labels.tolist()) for name, fn in (metrics or {}).items()}
    return {
        "accuracy": float(np.mean(fold_accuracies)),
        "accuracy_std": float(np.std(fold_accuracies)),  # population std over folds (ddof=0)
        "macro_f1": float(np.mean(fold_f1s)),
        "macro_f1_std": float(np.std(fold_f1s)),
        "per_sense_recall": {label: float(recall) for label, recall in zip(labels.tolist(), recalls)},
        "labels": labels.tolist(),
        "confusion": confusion.tolist(),  # rows: true, columns: predicted
        "fold_accuracies": [float(accuracy) for accuracy in fold_accuracies],
        "correct": correct,
        **({"metrics": {name: _plain(value) for name, value in extra.items()}} if extra else {}),
    }


# scikit-learn's metrics, from one confusion matrix: the same numbers (tests check them against sklearn's),
# without its input checks, which took most of a cached rerun's scoring (thousands of folds).


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``confusion_matrix(y_true, y_pred, labels=labels)``; rows: true, columns: predicted."""
    if not (np.isin(y_true, labels).all() and np.isin(y_pred, labels).all()):
        return confusion_matrix(y_true, y_pred, labels=labels)  # a label outside ``labels``: sklearn's rules
    n = len(labels)
    cells = np.searchsorted(labels, y_true) * n + np.searchsorted(labels, y_pred)
    return np.bincount(cells, minlength=n * n).reshape(n, n)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> float:
    """``f1_score(y_true, y_pred, average="macro", zero_division=0)``: over the labels either one has."""
    if not np.isin(y_pred, labels).all():  # a label outside ``labels``: sklearn's own rules
        return float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    confusion = confusion_counts(y_true, y_pred, labels)
    true_sum, pred_sum = confusion.sum(1), confusion.sum(0)
    present = (true_sum + pred_sum) > 0
    return float(np.mean(_ratio(2 * np.diag(confusion)[present], (true_sum + pred_sum)[present])))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (zero_division=0)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _checked(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ProbeError(f"X has {len(X)} rows but y has {len(y)} labels")
    return X, y


def shuffled_labels(y: Sequence, seed: int) -> np.ndarray:
    """The labels permuted by a seeded RNG: the shuffled-label control's targets."""
    return np.random.default_rng(seed).permutation(np.asarray(y))


def _plain(value):
    """Numpy scalars and arrays as plain JSON-ready numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else value


def majority_baseline(y: Sequence, groups: Sequence | None, n_folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Predict each training fold's most frequent label, on the same folds as the probe."""
    no_features = np.zeros((len(y), 1), dtype=np.float32)
    return cross_validate(
        no_features, y, groups, lambda: DummyClassifier(strategy="most_frequent"), n_folds, seed
    )


def shuffled_label_control(
    X: np.ndarray,
    y: Sequence,
    groups: Sequence | None,
    make_probe: Callable[[], Any],
    n_folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """The probe on labels permuted by a seeded RNG: what it scores when the features carry no sense signal."""
    return cross_validate(X, shuffled_labels(y, seed), groups, make_probe, n_folds, seed)


def describe_probe(estimator) -> dict[str, Any]:
    """What a probe is, for results.json: its one-line repr (scikit-learn prints the parameters that differ
    from their defaults) and every plain parameter (``get_params``, nested ones as ``step__name``),
    e.g. ``logisticregression__C``; the regularisation strength ``C`` on its own when the probe has one."""
    described: dict[str, Any] = {"estimator": " ".join(repr(estimator).split())}
    if hasattr(estimator, "get_params"):
        params = estimator.get_params(deep=True)
        plain = {name: value for name, value in params.items()
                 if value is None or isinstance(value, (bool, int, float, str))}
        described["params"] = plain
        c_values = [value for name, value in plain.items() if name == "C" or name.endswith("__C")]
        if len(c_values) == 1:
            described["C"] = c_values[0]
    return described
