"""Typed results of a run: one ``LayerResult`` per layer × position × subset, baselines, and where they came
from. ``Results.layers`` is the tidy table (a pandas DataFrame) that reporters and notebooks read;
``to_dict()`` is what results.json holds, and ``Results.model_json_schema()`` describes it.

"Layer N" is hidden state N: 0 = the embeddings, N = the residual stream leaving block N.

Where a result came from: probe's git commit (when probe runs from a git checkout) and when it was made.

Both are recorded in results.json under ``provenance``. Neither changes a number, so comparisons of two
runs' results leave them out (``without_provenance``).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

# Scalar columns of the tidy table, in order; the extra metrics follow them.
TABLE_COLUMNS = (
    "layer", "position", "subset", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
    "shuffled_accuracy", "selectivity", "random_weights_accuracy", "reference_accuracy",
    "max_abs_diff_vs_reference", "dev_accuracy",
    # the permutation test and the control task (probe/permutation.py, probe/control_tasks.py)
    "permutation_accuracy", "permutation_p_value", "permutation_selectivity",
    "control_task_accuracy", "control_task_selectivity",
    # intervals and corrected p-values (probe/pipeline/statistics.py)
    "accuracy_ci_low", "accuracy_ci_high", "permutation_p_holm", "permutation_p_bh",
    "control_task_selectivity_ci_low", "control_task_selectivity_ci_high",
)


class LayerResult(BaseModel):
    """A linear probe's cross-validated scores at one hidden state, position and subset of rows."""

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(description="hidden state: 0 = embeddings, N = after block N")
    position: str = Field(description="target (the word) or last (the sentence's last token)")
    subset: str = Field(description="'all', or a value of the config's split_by column")
    # classification (task: classification); None in a regression run, whose scores are the r2_… fields
    accuracy: float | None = None
    accuracy_std: float | None = Field(None, description="population std of the accuracy over folds")
    macro_f1: float | None = None
    macro_f1_std: float | None = None
    per_sense_recall: dict[str, float] | None = None
    labels: list[str] | None = None
    confusion: list[list[int]] | None = Field(None, description="rows: true sense, columns: predicted, order of labels")
    fold_accuracies: list[float] | None = None
    # regression (task: regression; probe/science/regression.py): pooled out-of-fold scores
    r2: float | None = Field(None, description="R² of the pooled out-of-fold predictions")
    r2_std: float | None = Field(None, description="population std of the R² over folds")
    fold_r2s: list[float] | None = None
    r2_ci: list[float] | None = Field(None, description="95% interval of r2: [low, high] (statistics.interval)")
    spearman: float | None = Field(None, description="Spearman correlation of the out-of-fold predictions")
    spearman_ci: list[float] | None = Field(None, description="95% interval of spearman: [low, high]")
    shuffled_r2: float | None = Field(None, description="r2 of the probe trained on shuffled numbers")
    shuffled_spearman: float | None = None
    random_weights_r2: float | None = Field(None, description="r2 on a randomly initialised model's vectors")
    random_weights_spearman: float | None = None
    predictions: list[float | None] | None = Field(
        None, description="each dataset row's out-of-fold prediction (null: not scored, e.g. another subset)")
    metrics: dict[str, Any] | None = Field(None, description="extra metrics on pooled out-of-fold predictions")
    shuffled_accuracy: float | None = None
    selectivity: float | None = Field(None, description="accuracy − shuffled_accuracy")
    random_weights_accuracy: float | None = None
    reference_accuracy: float | None = None
    max_abs_diff_vs_reference: float | None = None
    # Stronger controls and plugin measures: absent unless the config asks for them.
    permutation_accuracies: list[float] | None = Field(None, description="accuracy under each label permutation")
    permutation_accuracy: float | None = Field(None, description="mean of permutation_accuracies")
    permutation_p_value: float | None = Field(
        None, description="(1 + #permutations scoring ≥ accuracy) / (1 + #permutations)")
    permutation_selectivity: float | None = Field(None, description="accuracy − permutation_accuracy")
    control_task_accuracy: float | None = Field(None, description="accuracy on the Hewitt–Liang control task")
    control_task_selectivity: float | None = Field(None, description="accuracy − control_task_accuracy")
    control_task_selectivity_ci: list[float] | None = Field(
        None, description="95% interval of the selectivity: [low, high], a paired bootstrap of each row's probe "
        "minus control-task correctness (groups drawn whole)")
    measures: dict[str, dict[str, float]] | None = Field(
        None, description="per-layer measures from plugins (config `measures`), e.g. mdl: {codelength, …}")
    dev_accuracy: float | None = Field(None, description="a fixed split's dev rows, scored by the train-only fit")
    accuracy_ci: list[float] | None = Field(
        None, description="95% interval of the accuracy: [low, high] (how: results.json's statistics.interval)")
    permutation_p_holm: float | None = Field(None, description="permutation_p_value, Holm-adjusted over layers")
    permutation_p_bh: float | None = Field(
        None, description="permutation_p_value, Benjamini–Hochberg-adjusted over layers")
    correct: str | None = Field(None, description="each dataset row's out-of-fold result: 1 right, 0 wrong, "
                                ". not scored (another subset, or not a test row)")

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True)


# The tidy table's columns in a regression run (task: regression), in order.
REGRESSION_COLUMNS = (
    "layer", "position", "subset", "r2", "r2_std", "r2_ci_low", "r2_ci_high", "spearman", "spearman_ci_low",
    "spearman_ci_high", "shuffled_r2", "shuffled_spearman", "random_weights_r2", "random_weights_spearman",
)


def table_record(row: LayerResult) -> dict:
    """One row of the tidy table: the fixed columns, then the numeric extra metrics and the measures."""
    if row.r2 is not None:
        return regression_record(row)
    interval = row.accuracy_ci or [None, None]
    selectivity = row.control_task_selectivity_ci or [None, None]
    computed = {"accuracy_ci_low": interval[0], "accuracy_ci_high": interval[1],
                "control_task_selectivity_ci_low": selectivity[0], "control_task_selectivity_ci_high": selectivity[1]}
    record = {column: computed[column] if column in computed else getattr(row, column) for column in TABLE_COLUMNS}
    record.update({f"recall_{sense}": recall for sense, recall in (row.per_sense_recall or {}).items()})
    for name, value in (row.metrics or {}).items():
        if isinstance(value, (int, float)):
            record[name] = value
    for measure, values in (row.measures or {}).items():
        record.update({f"{measure}_{name}": value for name, value in values.items()})
    return record


def regression_record(row: LayerResult) -> dict:
    """A regression row of the tidy table (REGRESSION_COLUMNS): no accuracy, recall or confusion columns."""
    computed = {}
    for name in ("r2", "spearman"):
        low, high = getattr(row, f"{name}_ci") or [None, None]
        computed |= {f"{name}_ci_low": low, f"{name}_ci_high": high}
    return {column: computed[column] if column in computed else getattr(row, column)
            for column in REGRESSION_COLUMNS}


class Baseline(BaseModel):
    accuracy: float | None = Field(None, description="a classification baseline's (majority, layer N)")
    r2: float | None = Field(None, description="a regression baseline's (mean, layer N)")
    r2_ci: list[float] | None = None
    spearman: float | None = None
    accuracy_std: float | None = None
    macro_f1: float | None = None
    accuracy_ci: list[float] | None = Field(None, description="95% interval, as the layer rows'")


class ModelInfo(BaseModel):
    name: str
    path: str
    revision: str | None = None
    layers: int = Field(description="number of transformer blocks (hidden states 0..layers)")


class DatasetInfo(BaseModel):
    name: str
    rows: int
    labels: list[str]
    skipped_rows: list[str] = []
    digest: str | None = Field(None, description="hash of every row's text, target span and label, in order: "
                               "two runs' rows pair up only when it matches")
    groups: list[int] | None = Field(None, description="each row's group as a number, when rows have groups")


class Diagnostic(BaseModel):
    """Something in the data or the vectors that makes a number easy to misread (probe/pipeline/diagnostics.py):
    what it is (``code``), which rows and layers, and what to do. Printed by ``probe run`` (one line each),
    listed in summary.md and report.html."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="what was found, e.g. identical-vectors, cue-hidden, label-not-trained")
    message: str = Field(description="one line: what was found, naming the rows or labels at fault")
    advice: str = Field("", description="what to do about it")
    rows: list[int] = Field([], description="the rows at fault, numbered from 1 as in the dataset's source")
    layers: list[int] = Field([], description="the layers where it holds (empty: not about layers)")
    details: dict[str, Any] = Field({}, description="the numbers behind the message (per-cue accuracy, …)")

    def line(self) -> str:
        """The console's one-line form."""
        return f"{self.code}: {self.message}"


class Provenance(BaseModel):
    """When the results were made and from which probe; changes no number (see probe/provenance.py)."""

    timestamp: str = Field(description="when the run finished probing, UTC ISO-8601")
    git_commit: str | None = Field(None, description="probe's git commit, when run from a git checkout")

    @classmethod
    def now(cls) -> Provenance:
        from probe.pipeline.results import git_commit, timestamp

        return cls(timestamp=timestamp(), git_commit=git_commit())


class ReporterOutcome(BaseModel):
    """What one reporter did in a run: ``ran``, or ``skipped`` with the reason it gave."""

    name: str
    status: str
    reason: str = ""


class ReporterLog:
    """What each reporter of a run did, in the order they finished: the pipeline notes, reporters read."""

    def __init__(self) -> None:
        self._outcomes: list[ReporterOutcome] = []

    def note(self, name: str, status: str, reason: str = "") -> None:
        self._outcomes.append(ReporterOutcome(name=name, status=status, reason=reason))

    @property
    def outcomes(self) -> tuple[ReporterOutcome, ...]:
        return tuple(self._outcomes)


class Results(BaseModel):
    """Everything a run found, typed: ``rows`` (one LayerResult each), ``layers`` (the tidy table),
    ``baselines``, ``model``, ``dataset``. ``to_dict()`` is results.json's form, for writing it."""

    experiment: str
    description: str = ""
    task: str = Field("classification", description="classification (accuracy) or regression (r2, spearman)")
    model: ModelInfo
    settings: dict[str, Any]
    versions: dict[str, str]
    dataset: DatasetInfo
    extraction: dict[str, Any] = Field({}, description="how the vectors were computed: attention_path per store")
    rows: list[LayerResult] = Field(alias="layers")
    baselines: dict[str, Baseline] = {}
    evaluation: dict[str, Any] | None = Field(None, description="the protocol that ran: cross-validation "
                                              "(splitter, n_splits) or a fixed split (split_field, parts, rows)")
    probe: dict[str, Any] | None = Field(None, description="the probe: name, options, estimator, params, C")
    best_layer: list[dict[str, Any]] | None = Field(
        None, description="per position × subset, the layer chosen on inner folds of each outer training part "
        "and its accuracy on the outer test parts, with a 95% interval")
    statistics: dict[str, Any] | None = Field(
        None, description="how the intervals were computed, and paired tests between layers")
    provenance: Provenance | None = None
    diagnostics: list[Diagnostic] = Field([], description="what makes a number here easy to misread")
    interventions: list[dict[str, Any]] = Field(
        [], description="every change made to activations: activation_hooks plugins (the whole run) and "
        "intervening reporters (steering, erasure); kind, plugin, version, options, hook_points, layers, effect")

    model_config = ConfigDict(populate_by_name=True)
    _run_dir: Path | None = PrivateAttr(default=None)  # the folder the reports went to, when known
    _run_id: str | None = PrivateAttr(default=None)  # the id in that folder's marker, when this process wrote it

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    @property
    def run_id(self) -> str | None:
        return self._run_id

    # ------------------------------------------------------------ serialisation

    def to_dict(self) -> dict:
        return {
            "experiment": self.experiment, "description": self.description, "task": self.task,
            "model": self.model.model_dump(), "settings": self.settings, "versions": self.versions,
            "dataset": self.dataset.model_dump(exclude_none=True), "extraction": self.extraction,
            "layers": [row.to_dict() for row in self.rows],
            "baselines": {name: b.model_dump(exclude_none=True) for name, b in self.baselines.items()},
            **{name: value for name, value in (("evaluation", self.evaluation), ("probe", self.probe)) if value},
            **{name: value for name, value in (("best_layer", self.best_layer), ("statistics", self.statistics))
               if value is not None},
            "provenance": self.provenance.model_dump() if self.provenance else None,
            "diagnostics": [d.model_dump() for d in self.diagnostics],
            "interventions": self.interventions,  # empty: nothing changed the activations
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Results:
        return cls.model_validate(data)

    # ------------------------------------------------------------ views

    @property
    def layers(self):
        """The tidy table: one row per layer × position × subset; scores and controls as columns."""
        import pandas as pd

        records = [table_record(row) for row in self.rows]
        return pd.DataFrame.from_records(records, columns=_columns(records))

    @property
    def headline(self) -> str:
        """The score a layer is ranked by: accuracy, or r2 in a regression run."""
        return "r2" if self.task == "regression" else "accuracy"

    def series(self) -> dict[tuple[str, str], list[LayerResult]]:
        """Layer rows grouped by (position, subset), in layer order."""
        grouped: dict[tuple[str, str], list[LayerResult]] = {}
        for row in self.rows:
            grouped.setdefault((row.position, row.subset), []).append(row)
        return {key: sorted(rows, key=lambda r: r.layer) for key, rows in grouped.items()}

    def best(self, metric: str | None = None):
        """The best layer per position × subset (the first one on a tie), as a table; ``metric``: accuracy
        (r2 in a regression run) unless named."""
        metric = metric or self.headline
        table = self.layers
        best = table.loc[table.groupby(["position", "subset"], sort=False)[metric].idxmax()]
        return best.reset_index(drop=True)

    def best_rows(self, metric: str | None = None) -> dict[tuple[str, str], LayerResult]:
        metric = metric or self.headline
        return {key: max(rows, key=lambda r: getattr(r, metric)) for key, rows in self.series().items()}

    def baseline(self, name: str, subset: str = "all") -> Baseline | None:
        """A baseline by name (majority, layer0_target, …) for a subset of rows."""
        return self.baselines.get(baseline_key(name, subset))


def baseline_key(name: str, subset: str) -> str:
    """The key of baseline ``name`` for the rows of ``subset`` in ``Results.baselines``."""
    return name if subset == "all" else f"{name}[{subset}]"


def _columns(records: list[dict]) -> list[str]:
    fixed = REGRESSION_COLUMNS if records and "r2" in records[0] else TABLE_COLUMNS
    extra = sorted({name for record in records for name in record} - set(fixed))
    return list(fixed) + extra


def load_results(run_dir: str | Path) -> Results:
    """The Results a run wrote to ``run_dir/results.json`` (or that file itself)."""
    path = Path(run_dir)
    if path.suffix != ".json":
        path = path / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a probe run folder?")
    from probe.store.files import published_by

    results = Results.from_dict(json.loads(path.read_text()))
    results._run_dir, results._run_id = path.parent, published_by(path.parent)
    return results


GIT_TIMEOUT_S = 2.0  # a slow or hung git must not hold up a run


def timestamp() -> str:
    """Now, in UTC, as ISO-8601 to the second: ``2026-11-25T20:15:00+00:00``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout probe is imported from; None for an installed copy, or without git.

    Only a checkout whose top folder holds probe's package counts: a virtualenv inside some other
    project's repository must not report that project's commit."""
    root = Path(__file__).resolve().parents[2]  # probe/pipeline/results.py → the checkout
    if not (root / ".git").exists():  # a folder, or a file in a git worktree
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def without_provenance(results: dict) -> dict:
    """A results dict (as in results.json) without the fields that differ between identical runs."""
    return {key: value for key, value in results.items() if key != "provenance"}
