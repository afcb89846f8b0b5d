"""Few-shot curves from a run over CoarseWSD-20's n-shot samples (dataset ``coarsewsd-nshot``, ``split_by:
sample``): accuracy against the number of training examples per sense, for the probe and for the
sense-centroid 1-NN baseline at one layer, with a 95 % interval across the draws.

Each sample (one draw of one word at one number of shots) is trained on its own training rows and scored
on its own test rows. For each draw, the words' accuracies are averaged (the macro average); the curve's
point is the mean of the draws' macro averages, and its interval is Student's t over the draws (mean ±
t₀.₉₇₅,ₖ₋₁ · s/√k for k draws, clipped to [0, 1]: with the release's three draws, t = 4.30, so the interval is wide). Each word's
own curve is in the table too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

FEW_SHOT_FILES = ("few_shot.csv", "few_shot.md", "few_shot.png")
COLUMNS = ("word", "shots", "draws", "probe_accuracy", "probe_ci_low", "probe_ci_high", "centroid_accuracy",
           "centroid_ci_low", "centroid_ci_high", "probe_per_draw", "centroid_per_draw")


class CurvePoint(BaseModel):
    """One point of a curve: a word (or ``macro average``) at a number of shots, over the draws."""

    word: str
    shots: int
    probe_per_draw: dict[str, float] = Field(description="draw → accuracy (the words' mean for the macro curve)")
    centroid_per_draw: dict[str, float]

    def record(self) -> dict:
        probe, centroid = across_draws(self.probe_per_draw), across_draws(self.centroid_per_draw)
        return {"word": self.word, "shots": self.shots, "draws": len(self.probe_per_draw),
                "probe_accuracy": probe[0], "probe_ci_low": probe[1], "probe_ci_high": probe[2],
                "centroid_accuracy": centroid[0], "centroid_ci_low": centroid[1], "centroid_ci_high": centroid[2],
                "probe_per_draw": _listed(self.probe_per_draw), "centroid_per_draw": _listed(self.centroid_per_draw)}


class FewShot(BaseModel):
    position: str
    layer: int
    probe: str
    points: list[CurvePoint]

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame.from_records([point.record() for point in self.points], columns=list(COLUMNS))


def across_draws(per_draw: dict[str, float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the mean over draws and its 95 % Student-t interval, clipped to [0, 1] (None with
    one draw)."""
    from scipy.stats import t

    values = np.asarray(list(per_draw.values()), dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None
    half = float(t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, max(0.0, mean - half), min(1.0, mean + half)  # an accuracy's interval stays within [0, 1]


def _listed(per_draw: dict[str, float]) -> str:
    return " ".join(f"{draw}:{value:.4f}" for draw, value in sorted(per_draw.items()))


# ---------------------------------------------------------------- computing it from a run


def make_few_shot(results, run, layer: int | None = None, n_jobs: int | None = None) -> FewShot:
    """The curves of a run whose rows have ``word``, ``shots`` and ``draw`` columns and whose subsets are
    samples; at ``layer`` (None: the deepest layer probed)."""
    from probe.science.probes import CosineCentroids, FitTask, evaluate

    config, table = run.config, run.rows.table
    position = config.positions[0]
    layer = max(run.layers) if layer is None else layer
    samples = [split for split in run.splits if split.name != "all"]
    probe = {row.subset: row.accuracy for row in results.rows if row.position == position and row.layer == layer}
    tasks = [FitTask(split.name, run.features.main.layer(position, layer)[split.index], split.y, split.folds,
                     metrics=False, make_probe=CosineCentroids) for split in samples]
    centroid = evaluate(tasks, CosineCentroids, n_jobs=n_jobs, cache=run.services.cache_dir / "probes")
    by_word = defaultdict(lambda: ({}, {}))  # (word, shots) → (draw → probe, draw → centroid)
    for split in samples:
        first = int(split.index[0])
        key = (table["word"][first], int(table["shots"][first]))
        by_word[key][0][table["draw"][first]] = probe[split.name]
        by_word[key][1][table["draw"][first]] = centroid[split.name]["accuracy"]
    points = [CurvePoint(word=word, shots=n, probe_per_draw=p, centroid_per_draw=c)
              for (word, n), (p, c) in sorted(by_word.items())]
    return FewShot(position=position, layer=layer, probe=config.probe_name, points=macro_points(points) + points)


def macro_points(points: list[CurvePoint]) -> list[CurvePoint]:
    """Per number of shots, each draw's mean over the words."""
    macro = []
    for n in sorted({point.shots for point in points}):
        at = [point for point in points if point.shots == n]
        draws = sorted(set.intersection(*(set(point.probe_per_draw) for point in at)))
        macro.append(CurvePoint(
            word="macro average", shots=n,
            probe_per_draw={d: float(np.mean([p.probe_per_draw[d] for p in at])) for d in draws},
            centroid_per_draw={d: float(np.mean([p.centroid_per_draw[d] for p in at])) for d in draws}))
    return macro


# ---------------------------------------------------------------- writing it


def write_few_shot(curves: FewShot, output_dir: Path) -> list[Path]:
    """few_shot.csv (every word's curve and the macro one), few_shot.md (the macro curve) and few_shot.png."""
    from probe.store.files import write_text_atomic

    output_dir = Path(output_dir)
    table = curves.table
    written = [write_text_atomic(output_dir / FEW_SHOT_FILES[0], table.to_csv(index=False))]
    written.append(write_text_atomic(output_dir / FEW_SHOT_FILES[1], few_shot_markdown(curves)))
    written.append(plot_few_shot(curves, output_dir / FEW_SHOT_FILES[2]))
    return written


def few_shot_markdown(curves: FewShot) -> str:
    lines = [f"# Few-shot curve (layer {curves.layer}, {curves.position}, probe {curves.probe})", "",
             "Accuracy on each sample's test rows, averaged over the words, then over the draws; 95% Student-t "
             "interval across the draws.", "",
             "| shots per sense | draws | probe (95% CI) | centroid 1-NN (95% CI) |", "|---|---|---|---|"]
    for record in curves.table.to_dict("records"):
        if record["word"] == "macro average":
            lines.append(f"| {record['shots']} | {record['draws']} | {_with_ci(record, 'probe')} | "
                         f"{_with_ci(record, 'centroid')} |")
    return "\n".join(lines) + "\n"


def _with_ci(record: dict, name: str) -> str:
    low, high = record[f"{name}_ci_low"], record[f"{name}_ci_high"]
    interval = "" if low is None or np.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{record[f'{name}_accuracy']:.3f}{interval}"


def plot_few_shot(curves: FewShot, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe.store.files import write_atomic

    macro = curves.table[curves.table["word"] == "macro average"]
    figure, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, colour in (("probe", "tab:blue"), ("centroid", "tab:orange")):
        mean = macro[f"{name}_accuracy"].to_numpy(dtype=float)
        low = macro[f"{name}_ci_low"].to_numpy(dtype=float)
        high = macro[f"{name}_ci_high"].to_numpy(dtype=float)
        errors = np.nan_to_num(np.vstack([mean - low, high - mean]))
        label = curves.probe if name == "probe" else "sense centroid 1-NN"
        ax.errorbar(macro["shots"], mean, yerr=errors, marker="o", capsize=3, color=colour, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's own ticks (2×10⁰ …) would crowd the shots
    ax.set_xticks(macro["shots"].tolist(), [str(n) for n in macro["shots"]])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training examples per sense")
    ax.set_ylabel("macro accuracy over words")
    ax.set_title(f"Few-shot curve at layer {curves.layer} (95% t-interval over draws)", fontsize=9)
    ax.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path
