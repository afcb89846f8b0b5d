"""Hewitt–Liang control tasks (Hewitt & Liang 2019): each word type gets a fixed random label, so the
control task can only be solved by memorising which word is which, never by reading its sense. The
probe's selectivity is its accuracy on the real task minus its accuracy on the control task: high when
the layer encodes the sense, low when a probe of this capacity would score as well by word identity alone.

A word type is the target case-folded (``Mole`` at the start of a sentence is ``mole``); the control task
needs at least two. How a type's label is drawn:

- ``balanced`` (the word-sense default): the label set dealt round-robin over the types in a seeded order,
  so that two or more types always get two or more labels — a sense task has only a handful of types;
- ``empirical`` (Hewitt & Liang's own, the default for token tasks such as POS tagging): each type draws its
  label independently from the labels' distribution over the rows, so common tags stay common.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONTROL = "control_task"
DRAWS = ("balanced", "empirical")


class ControlTaskError(ValueError):
    """The rows have too few word types for a control task."""


def control_labels(word_types: Sequence[str], labels: Sequence[str], seed: int,
                   draw: str = "balanced") -> np.ndarray:
    """Each row's control label: a seeded random function of its word type onto the task's labels.

    ``balanced``: types are dealt labels from a seeded shuffle of the label set, round-robin over a seeded
    order of the types, so the function is random yet two or more types always map to two or more control
    labels. ``empirical``: each type (in sorted order) draws a label with the probabilities of the labels
    among the rows."""
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
    word_types = np.asarray([word.casefold() for word in word_types], dtype=object)
    types = sorted(set(word_types.tolist()))
    if len(types) < 2:
        raise ControlTaskError(
            f"a control task needs rows of at least two word types (targets); these rows have {len(types)}: "
            f"{', '.join(map(repr, types))}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))  # apart from the shuffled control's stream
    assigned = (_empirical if draw == "empirical" else _balanced)(types, np.asarray(labels), rng)
    return np.asarray([assigned[t] for t in word_types.tolist()])


def _balanced(types: list[str], labels: np.ndarray, rng) -> dict[str, str]:
    label_set = rng.permutation(sorted(set(labels.tolist())))
    order = rng.permutation(len(types))
    return {types[t]: str(label_set[i % len(label_set)]) for i, t in enumerate(order)}


def _empirical(types: list[str], labels: np.ndarray, rng) -> dict[str, str]:
    label_set, counts = np.unique(labels.astype(str), return_counts=True)
    drawn = rng.choice(len(label_set), size=len(types), p=counts / counts.sum())
    return {word_type: str(label_set[i]) for word_type, i in zip(types, drawn)}


def plan(rows, config, splits, draw: str = "balanced") -> dict[str, np.ndarray]:
    """Control labels per subset name (the function is fixed over all rows, then restricted); a subset
    with a single control label (one word type) has none. Raises ControlTaskError when no subset has two."""
    every_row = control_labels(rows["target"], rows["label"], config.seed, draw)
    planned = {split.name: every_row[split.index] for split in splits}
    return {name: labels for name, labels in planned.items() if len(set(labels.tolist())) > 1}


def tasks(key: tuple, X: np.ndarray, labels: np.ndarray, folds: list) -> list:
    """The control task's FitTask on the real labels' folds, keyed ``(*key, "control_task")``."""
    from probe.science.probes import FitTask

    return [FitTask((*key, CONTROL), X, labels, folds, metrics=False)]


def fill(row, scores: dict, key: tuple) -> None:
    row.control_task_accuracy = scores[(*key, CONTROL)]["accuracy"]
    row.control_task_selectivity = row.accuracy - row.control_task_accuracy
