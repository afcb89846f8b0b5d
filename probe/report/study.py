"""A benchmark as one study table: per subset of ``split_by`` (per word of CoarseWSD-20), the layer chosen
without peeking at its test rows and the probe's accuracy there, beside the 1-nearest-neighbour
sense-centroid baseline of Loureiro et al. (2021) on the same vectors; then the macro average over the
subsets. Every accuracy carries its 95 % interval, computed as the run's own (Wilson on a fixed split's
test rows); the macro average's is a percentile bootstrap that resamples each subset's scored rows on
their own (a stratified bootstrap), since the subsets are scored on separate rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from probe.pipeline import statistics
from probe.report.numbers import MISSING, interval, number
from probe.science import intervals

STUDY_FILES = ("study.csv", "study.md")


class StudyRow(BaseModel):
    """One subset (a word) of the study."""

    subset: str = Field(description="the value of the run's split_by column (a word)")
    senses: int
    train_rows: int
    test_rows: int = Field(description="the rows scored: a fixed split's test rows, or every row under k folds")
    layer: int | None = Field(description="the layer chosen on inner folds of the training rows (None: too few)")
    accuracy: float | None = Field(description="the probe's accuracy at that layer on the scored rows")
    accuracy_ci: list[float] | None = None
    centroid_accuracy: float | None = Field(description="the sense-centroid baseline at the same layer")
    centroid_ci: list[float] | None = None
    majority_accuracy: float | None = None


class Study(BaseModel):
    """The study: one row per subset, and the macro average of each column over the subsets."""

    position: str
    probe: str
    rows: list[StudyRow]
    macro_subsets: int = Field(0, description="the subsets the macro average is over: those with a chosen layer")
    macro_accuracy: float | None = None
    macro_accuracy_ci: list[float] | None = None
    macro_centroid_accuracy: float | None = None
    macro_centroid_ci: list[float] | None = None
    interval: str = ""

    @property
    def table(self):
        """The tidy view: one row per subset, then a ``macro`` row."""
        import pandas as pd

        records = [_record(row) for row in self.rows]
        records.append({"subset": "macro average", "accuracy": self.macro_accuracy,
                        **_bounds("accuracy", self.macro_accuracy_ci), "centroid_accuracy": self.macro_centroid_accuracy,
                        **_bounds("centroid", self.macro_centroid_ci)})
        table = pd.DataFrame.from_records(records, columns=COLUMNS)
        return table.astype({column: "Int64" for column in COUNTS})  # whole numbers, blank on the macro row


COLUMNS = ["subset", "senses", "train_rows", "test_rows", "layer", "accuracy", "accuracy_ci_low",
           "accuracy_ci_high", "centroid_accuracy", "centroid_ci_low", "centroid_ci_high", "majority_accuracy"]


COUNTS = ["senses", "train_rows", "test_rows", "layer"]


def _bounds(name: str, interval: list[float] | None) -> dict:
    low, high = interval or (None, None)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def _record(row: StudyRow) -> dict:
    return {**row.model_dump(exclude={"accuracy_ci", "centroid_ci"}), **_bounds("accuracy", row.accuracy_ci),
            **_bounds("centroid", row.centroid_ci)}


# ---------------------------------------------------------------- computing it from a run


def make_study(results, run, n_jobs: int | None = None) -> Study:
    """The study of a finished run (``results`` and the run's RunData): subsets of ``split_by`` (the whole
    run when it has none), the config's first position."""
    from probe.pipeline.evaluation import FixedSplit
    from probe.science.probes import CosineCentroids, FitTask, evaluate

    config = run.config
    position, fixed, seed = config.positions[0], isinstance(config.protocol, FixedSplit), config.seed
    groups = statistics.group_ids(run.rows.table["group"])
    chosen = {entry["subset"]: entry for entry in results.best_layer or [] if entry["position"] == position}
    splits = [split for split in run.splits if split.name != "all"] or list(run.splits)
    tasks = [FitTask(split.name, run.features.main.layer(position, chosen[split.name]["layer"])[split.index],
                     split.y, split.folds, metrics=False, make_probe=CosineCentroids)
             for split in splits if chosen.get(split.name, {}).get("layer") is not None]
    centroid = evaluate(tasks, CosineCentroids, n_jobs=n_jobs, cache=run.services.cache_dir / "probes")
    n_rows = len(run.rows)
    probe_right, centroid_right, rows = [], [], []
    for split in splits:
        entry = chosen.get(split.name, {})
        probe_marks = _nested_marks(results, split, entry, position, n_rows) if entry.get("layer") is not None else None
        centroid_marks = (statistics.aligned_correct(centroid[split.name]["correct"], split.index, n_rows)
                          if split.name in centroid else None)
        rows.append(_study_row(results, split, entry, probe_marks, centroid_marks, groups, fixed, seed))
        probe_right.append(probe_marks)
        centroid_right.append(centroid_marks)
    study = Study(position=position, probe=config.probe_name, rows=rows,
                  interval=statistics.interval_method(fixed, groups is not None))
    study.macro_subsets = sum(marks is not None for marks in probe_right)
    study.macro_accuracy, study.macro_accuracy_ci = macro_average(probe_right, groups, seed)
    study.macro_centroid_accuracy, study.macro_centroid_ci = macro_average(centroid_right, groups, seed)
    return study


def _nested_marks(results, split, entry: dict, position: str, n_rows: int) -> str:
    """The dataset-wide correctness of the nested choice: each outer fold's test rows scored at its layer."""
    by_layer = {row.layer: row for row in results.rows if row.subset == split.name and row.position == position}
    marks = [statistics.UNSCORED] * n_rows
    for (_, test), layer in zip(split.folds, entry["per_outer_fold"]):
        for row in np.asarray(split.index)[test].tolist():
            marks[row] = by_layer[layer].correct[row]
    return "".join(marks)


def _study_row(results, split, entry: dict, probe_marks, centroid_marks, groups, fixed: bool, seed: int) -> StudyRow:
    train, test = split.folds[0] if fixed else (np.arange(len(split.y)), np.arange(len(split.y)))
    majority = results.baseline("majority", split.name)

    def accuracy(marks):
        return None if marks is None else float(statistics.scored(marks)[1].mean())

    return StudyRow(
        subset=split.name, senses=len(set(split.y.tolist())), train_rows=len(train), test_rows=len(test),
        layer=entry.get("layer"), accuracy=accuracy(probe_marks),
        accuracy_ci=None if probe_marks is None else statistics.interval(probe_marks, groups, fixed, seed),
        centroid_accuracy=accuracy(centroid_marks),
        centroid_ci=None if centroid_marks is None else statistics.interval(centroid_marks, groups, fixed, seed),
        majority_accuracy=majority.accuracy if majority else None)


def macro_average(marks: list[str | None], groups, seed: int) -> tuple[float | None, list[float] | None]:
    """The mean over subsets of each subset's accuracy, and its 95 % percentile interval: each resample
    draws every subset's scored rows (groups together) with replacement, on its own, and averages the
    subsets' accuracies. Subsets without a score (None: no layer chosen) are left out; None when none has."""
    marks = [m for m in marks if m is not None]
    if not marks:
        return None, None
    means = []
    for n, subset_marks in enumerate(marks):
        rows, right = statistics.scored(subset_marks)
        row_groups = None if groups is None else [groups[i] for i in rows]
        means.append(intervals.bootstrap_means(right, row_groups, seed=seed + n))
    averaged = np.mean(means, axis=0)
    tail = (1 - intervals.CONFIDENCE) / 2
    low, high = np.quantile(averaged, [tail, 1 - tail])
    accuracy = float(np.mean([statistics.scored(m)[1].mean() for m in marks]))
    return accuracy, [float(low), float(high)]


# ---------------------------------------------------------------- writing it


def write_study(study: Study, output_dir: Path) -> list[Path]:
    """study.csv (the tidy table) and study.md (the same, rounded, with intervals as ranges)."""
    from probe.store.files import write_text_atomic

    output_dir = Path(output_dir)
    csv = write_text_atomic(output_dir / STUDY_FILES[0], study.table.to_csv(index=False))
    return [csv, write_text_atomic(output_dir / STUDY_FILES[1], study_markdown(study))]


def study_markdown(study: Study) -> str:
    lines = [f"# Study: best layer per subset ({study.position}, probe {study.probe})", "",
             f"Layer: chosen on inner folds of each subset's training rows. Intervals: {study.interval}; "
             "the macro average's: a percentile bootstrap resampling each subset's rows on its own.", "",
             "| subset | senses | train | test | layer | probe accuracy (95% CI) | centroid 1-NN (95% CI) | majority |",
             "|---|---|---|---|---|---|---|---|"]
    for row in study.rows:
        lines.append(f"| {row.subset} | {row.senses} | {row.train_rows} | {row.test_rows} | "
                     f"{MISSING if row.layer is None else row.layer} | {_with_ci(row.accuracy, row.accuracy_ci)} | "
                     f"{_with_ci(row.centroid_accuracy, row.centroid_ci)} | {number(row.majority_accuracy)} |")
    lines.append(f"| **macro average** | | | | | {_with_ci(study.macro_accuracy, study.macro_accuracy_ci)} | "
                 f"{_with_ci(study.macro_centroid_accuracy, study.macro_centroid_ci)} | |")
    left_out = [row.subset for row in study.rows if row.layer is None]
    if left_out:
        lines += ["", f"The macro average is over {study.macro_subsets} of {len(study.rows)} subsets: "
                  f"{', '.join(left_out)} got no layer (a sense has too few training rows for 3 inner folds)."]
    return "\n".join(lines) + "\n"


def _with_ci(value: float | None, bounds: list[float] | None) -> str:
    if value is None:
        return MISSING
    return number(value) + (f" {interval(bounds)}" if bounds else "")
