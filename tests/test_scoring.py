"""probe computes accuracy, macro-F1, recall and the confusion matrix from one confusion matrix; every
number must equal scikit-learn's, bit for bit, since results are compared across versions and runs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from probe.science.probes import confusion_counts, macro_f1, score

LABELS = ["animal", "lesion", "spy", "unit"]

label_lists = st.lists(st.sampled_from(LABELS), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fold_metrics_equal_sklearns(data):
    y_true = np.array(data.draw(label_lists))
    y_pred = np.array(data.draw(st.lists(st.sampled_from(LABELS), min_size=len(y_true), max_size=len(y_true))))
    labels = np.unique(np.concatenate([y_true, data.draw(st.lists(st.sampled_from(LABELS), max_size=4))]))
    if not np.isin(y_pred, labels).all():
        labels = np.unique(np.concatenate([labels, y_pred]))
    assert macro_f1(y_true, y_pred, labels) == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert (confusion_counts(y_true, y_pred, labels) == confusion_matrix(y_true, y_pred, labels=labels)).all()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_cross_validated_scores_equal_sklearns(data):
    n = data.draw(st.integers(4, 40))
    y = np.array(data.draw(st.lists(st.sampled_from(LABELS), min_size=n, max_size=n)))
    order = np.random.default_rng(data.draw(st.integers(0, 99))).permutation(n)
    folds = [(np.setdiff1d(order, part), part) for part in np.array_split(order, 2)]
    predictions = [np.array(data.draw(st.lists(st.sampled_from(LABELS), min_size=len(t), max_size=len(t))))
                   for _, t in folds]
    scores = score(y, folds, predictions)
    pooled = np.empty_like(y)
    for (_, test), predicted in zip(folds, predictions):
        pooled[test] = predicted
    labels = np.unique(y)
    assert scores["fold_accuracies"] == [accuracy_score(y[t], p) for (_, t), p in zip(folds, predictions)]
    assert scores["macro_f1"] == float(np.mean([f1_score(y[t], p, average="macro", zero_division=0)
                                                for (_, t), p in zip(folds, predictions)]))
    recalls = recall_score(y, pooled, labels=labels, average=None, zero_division=0)
    assert scores["per_sense_recall"] == {label: float(r) for label, r in zip(labels.tolist(), recalls)}
    assert scores["confusion"] == confusion_matrix(y, pooled, labels=labels).tolist()


def test_a_prediction_outside_the_labels_follows_sklearn():
    y_true, y_pred = np.array(["a", "b", "b"]), np.array(["a", "c", "b"])
    labels = np.array(["a", "b"])
    assert macro_f1(y_true, y_pred, labels) == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert (confusion_counts(y_true, y_pred, labels) == confusion_matrix(y_true, y_pred, labels=labels)).all()
