"""A regression run's figures: R² and Spearman per layer with their 95 % bands and controls
(regression.png), and the out-of-fold predictions against the true numbers at the best layer (scatter.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probe.pipeline.results import LayerResult, Results
from probe.report.numbers import number
from probe.report.regression import SCORES
from probe.report.writers import LAYER_AXIS, _pyplot, _save

CURVES_FILE, SCATTER_FILE = "regression.png", "scatter.png"


def curves_figure(results: Results):
    """R² and Spearman per layer, side by side: the probe with its 95 % band, its controls, the mean baseline."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(1, 2, figsize=(10.4, 4.0), squeeze=False)
    for ax, (score, name) in zip(axes[0], SCORES):
        for (position, subset), rows in results.series().items():
            _plot_score(ax, rows, score, f"{position}, {subset} rows")
        mean = results.baseline("mean")
        if mean is not None and getattr(mean, score) is not None:
            ax.axhline(getattr(mean, score), color="grey", lw=1, label="mean predictor")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel(LAYER_AXIS)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"cross-validated {name}")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper center", ncol=min(len(names), 4), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{results.experiment} on {results.model.name}: regression probe per layer")
    fig.tight_layout()
    return fig


def _plot_score(ax, rows: list[LayerResult], score: str, label: str) -> None:
    layers = [r.layer for r in rows]
    (line,) = ax.plot(layers, [getattr(r, score) for r in rows], marker="o", label=f"probe ({label})")
    bands = [getattr(r, f"{score}_ci") for r in rows]
    if all(bands):
        low, high = np.array(bands).T
        ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.2, label=f"95% interval ({label})")
    for control, style in (("shuffled", ":"), ("random_weights", "--")):
        values = [getattr(r, f"{control}_{score}") for r in rows]
        if values[0] is not None:
            ax.plot(layers, values, ls=style, color=line.get_color(), alpha=0.7,
                    label=f"{control.replace('_', ' ')} ({label})")


def best_row(results: Results) -> LayerResult:
    """The first position's 'all' row at the layer the nested choice picked most often (the highest R²
    when none was chosen)."""
    position = next(iter(results.series()))[0]
    rows = results.series().get((position, "all")) or next(iter(results.series().values()))
    picked = next((b["layer"] for b in results.best_layer or []
                   if b["position"] == position and b["subset"] == rows[0].subset and b.get("layer") is not None), None)
    if picked is None:
        return max(rows, key=lambda r: -np.inf if np.isnan(r.r2) else r.r2)
    return next(r for r in rows if r.layer == picked)


def scatter_points(row: LayerResult, true_numbers) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) of the rows ``row`` scored."""
    scored = [i for i, value in enumerate(row.predictions or []) if value is not None]
    true = np.asarray([float(true_numbers[i]) for i in scored])
    return true, np.asarray([row.predictions[i] for i in scored])


def scatter_figure(results: Results, true_numbers):
    """Out-of-fold predicted against true numbers at the best layer, with the diagonal."""
    row = best_row(results)
    true, predicted = scatter_points(row, true_numbers)
    fig, ax = _pyplot().subplots(figsize=(4.8, 4.6))
    ax.scatter(true, predicted, s=14, alpha=0.7)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="predicted = true")
    ax.set_xlabel("true number (label)")
    ax.set_ylabel("out-of-fold prediction")
    ax.set_title(f"layer {row.layer}, {row.position} token: R² {number(row.r2)}, Spearman {number(row.spearman)}",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{results.experiment} on {results.model.name}: predicted vs true")
    fig.tight_layout()
    return fig


SCATTER_TITLE = "Predicted vs true at the best layer"
SCATTER_HINT = "Each row's out-of-fold prediction at the layer the nested choice picked most often."


def plot(results: Results, output_dir: Path, true_numbers, formats=("png",)) -> list[Path]:
    """regression.png (the curves) and scatter.png (the best layer), in ``formats`` too."""
    return [_save(curves_figure(results), output_dir / CURVES_FILE, formats),
            _save(scatter_figure(results, true_numbers), output_dir / SCATTER_FILE, formats)]
