"""How a probe is scored: the config's ``evaluation`` field.

Two protocols, both giving the same thing downstream — a list of (train indices, test indices) folds:

- cross-validation (the default): a scikit-learn splitter. ``evaluation: {cv: 5}`` (or no ``evaluation``
  at all, which uses ``folds``) picks StratifiedGroupKFold when the rows have groups and StratifiedKFold
  when they don't, seeded with ``seed``; ``cv: StratifiedKFold`` (or another name in ``SPLITTERS``)
  names the splitter outright, with ``folds`` splits.
- a fixed split: ``evaluation: {split_field: split, train: train, test: test, dev: dev}`` fits on the
  rows whose ``split`` column says ``train`` and scores on those that say ``test`` — a benchmark's own
  split. ``dev`` is optional: its rows are scored by the same
  train-only fit and reported as ``dev_accuracy``. Rows with any other value are not used.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITTERS = ("StratifiedGroupKFold", "StratifiedKFold", "GroupKFold", "KFold")
CV_KEYS = ("cv",)
FIXED_KEYS = ("split_field", "train", "test", "dev")
KEYS = CV_KEYS + FIXED_KEYS


# ---------------------------------------------------------------- the config field


def parse(value: Any) -> dict:
    """The ``evaluation`` field, checked: {} (cross-validation with ``folds``), {cv: N or a splitter name},
    or {split_field, train, test[, dev]}. Raises ValueError with a sentence that says what to write."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping, e.g. {{cv: 5}} or {{split_field: split, train: train, test: test}}, "
                         f"got {value!r}")
    unknown = [key for key in value if key not in KEYS]
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"has unknown key {unknown[0]!r}{hint}; accepted keys: {', '.join(KEYS)}")
    fixed = [key for key in FIXED_KEYS if key in value]
    if fixed and "cv" in value:
        raise ValueError("takes either cv (cross-validation) or split_field/train/test (a fixed split), not both")
    return _parse_fixed(value) if fixed else _parse_cv(value)


def _parse_cv(value: dict) -> dict:
    if "cv" not in value:
        return {}
    cv = value["cv"]
    if isinstance(cv, bool) or not isinstance(cv, (int, str)):
        raise ValueError(f"cv must be a number of folds (≥ 2) or a splitter name ({', '.join(SPLITTERS)}), got {cv!r}")
    if isinstance(cv, int) and cv < 2:
        raise ValueError(f"cv must be at least 2 folds, got {cv}")
    if isinstance(cv, str) and cv not in SPLITTERS:
        near = difflib.get_close_matches(cv, SPLITTERS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"cv {cv!r} is not a splitter probe knows{hint}; accepted: {', '.join(SPLITTERS)} or a number")
    return {"cv": cv}


def _parse_fixed(value: dict) -> dict:
    missing = [key for key in ("split_field", "train", "test") if value.get(key) in (None, "")]
    if missing:
        raise ValueError(f"a fixed split needs split_field, train and test; missing {', '.join(missing)} "
                         "(e.g. {split_field: split, train: train, test: test})")
    parsed = {key: value.get(key) for key in FIXED_KEYS}
    for key, given in parsed.items():
        if given is not None and not isinstance(given, str):
            raise ValueError(f"{key} must be a str (a column name or one of its values), got {given!r}")
    named = [parsed[key] for key in ("train", "test", "dev") if parsed[key] is not None]
    if len(set(named)) != len(named):
        raise ValueError(f"train, test and dev must name different values of {parsed['split_field']!r}, got {named}")
    return parsed


# ---------------------------------------------------------------- protocols

Fold = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CrossValidation:
    """k-fold cross-validation through a scikit-learn splitter; ``splitter`` "auto": grouped when groups exist."""

    n_splits: int
    splitter: str = "auto"

    def folds(self, y, groups, seed: int, regression: bool = False) -> list[Fold]:
        """``regression``: ``y`` holds numbers, which can't be stratified (KFold, or GroupKFold with groups)."""
        from probe.science.probes import folds

        splitter = None if self.splitter == "auto" else self.splitter
        if regression and splitter is None:
            splitter = _regression_splitter(groups)
        return folds(y, groups, self.n_splits, seed, splitter=splitter)

    def min_rows_per_label(self) -> int:
        return self.n_splits

    def describe(self, grouped: bool, regression: bool = False) -> dict:
        """What ran, for results.json; "auto" resolved to the splitter the rows got."""
        from probe.science.regression import splitter_name

        splitter = self.splitter
        if splitter == "auto" and regression:
            splitter = splitter_name(grouped)
        elif splitter == "auto":
            splitter = "StratifiedGroupKFold" if grouped else "StratifiedKFold"
        return {"protocol": "cross-validation", "splitter": splitter, "n_splits": self.n_splits}


def _regression_splitter(groups) -> str:
    from probe.science.regression import splitter_name

    return splitter_name(groups is not None and any(group is not None for group in groups))


@dataclass(frozen=True)
class FixedSplit:
    """Fit on the rows whose ``split_field`` is ``train``; score on ``test`` (and ``dev``, when named)."""

    split_field: str
    train: str
    test: str
    dev: str | None = None

    def parts(self) -> tuple[str, ...]:
        return tuple(part for part in (self.train, self.test, self.dev) if part is not None)

    def folds(self, values: Sequence, scored: str | None = None) -> list[Fold]:
        """The one (train, test) fold — (train, dev) with ``scored="dev"``; ``values``: each row's
        ``split_field``. Rows of any other part sit out."""
        values = np.asarray([str(v) for v in values], dtype=object)
        scored_value = self.dev if scored == "dev" else self.test
        return [(np.flatnonzero(values == self.train), np.flatnonzero(values == scored_value))]

    def min_rows_per_label(self) -> int:
        return 1

    def describe(self, grouped: bool = False) -> dict:
        return {"protocol": "fixed split", "split_field": self.split_field, "train": self.train,
                "test": self.test, "dev": self.dev}


def protocol(config) -> CrossValidation | FixedSplit:
    """The protocol an ExperimentConfig asks for."""
    return config.protocol


def check_fixed_split(values: Sequence, labels: Sequence, split: FixedSplit, where: str) -> list[str]:
    """Why a fixed split can't be probed on these rows (empty when it can): training rows need two labels,
    the test part (and the dev part, when named) needs rows."""
    values = [str(v) for v in values]
    counts = Counter(values)
    problems = []
    train_labels = {label for value, label in zip(values, labels) if value == split.train}
    if len(train_labels) < 2:
        problems.append(f"{where}: the {split.train!r} rows (column {split.split_field!r}) have "
                        f"{len(train_labels)} label(s); a probe needs at least 2 to train on")
    for part in (split.test, split.dev):
        if part is not None and counts[part] == 0:
            found = ", ".join(f"{value!r} ({n})" for value, n in sorted(counts.items())) or "none"
            problems.append(f"{where}: no row has {split.split_field} = {part!r}; values found: {found}")
    return problems


def shuffled_within(y: np.ndarray, values: Sequence, parts: Sequence[str], seed: int) -> np.ndarray:
    """The shuffled-label control under a fixed split: labels permuted within each part, so the training
    and test parts keep their own label counts (a seeded RNG, one draw per part in ``parts`` order)."""
    rng = np.random.default_rng(seed)
    values = np.asarray([str(v) for v in values], dtype=object)
    shuffled = np.asarray(y).copy()
    for part in parts:
        rows = np.flatnonzero(values == part)
        shuffled[rows] = rng.permutation(shuffled[rows])
    return shuffled


def sentence(evaluation: dict | None, settings: dict) -> str:
    """One line for summary.md and report.html: which protocol ran."""
    if not evaluation:  # a results.json written before the protocol was recorded
        return f"{settings.get('folds')}-fold cross-validation, seed {settings.get('seed')}"
    if evaluation["protocol"] == "fixed split":
        rows = evaluation.get("rows", {})

        def counted(part: str) -> str:
            return f"{part!r}" + (f" ({rows[part]} rows)" if part in rows else "")

        text = (f"fixed split on column {evaluation['split_field']!r}: trained on {counted(evaluation['train'])}, "
                f"scored on {counted(evaluation['test'])}")
        if evaluation.get("dev"):
            text += f", dev accuracy on {counted(evaluation['dev'])}"
        return f"{text}; seed {settings.get('seed')}"
    return f"{evaluation['n_splits']}-fold cross-validation ({evaluation['splitter']}), seed {settings.get('seed')}"


def accuracy_axis(evaluation: dict | None) -> str:
    """The accuracy plots' axis title: what the number is under the protocol that ran."""
    if evaluation and evaluation.get("protocol") == "fixed split":
        return f"accuracy on {evaluation['test']!r} (fixed split)"
    return "cross-validated accuracy"
