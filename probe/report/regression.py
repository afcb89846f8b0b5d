"""The reports of a regression run (task: regression): results.csv's columns, the terminal's table,
summary.md and report.html's plotly view of R² and Spearman per layer (the PNG figures are in
probe/report/regression_figures.py).

The accuracy-only views — per-sense recall, the confusion matrix, the PCA coloured by sense — have no
regression counterpart here and are not drawn."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from probe.pipeline.evaluation import sentence as evaluation_sentence
from probe.pipeline.results import REGRESSION_COLUMNS, Results
from probe.report.numbers import interval, number
from probe.store.files import write_text_atomic

SCORES = (("r2", "R²"), ("spearman", "Spearman ρ"))


def write_csv(results: Results, output_dir: Path) -> Path:
    """results.csv: one row per layer × position × subset, the tidy table's regression columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(REGRESSION_COLUMNS))
    writer.writeheader()
    for record in results.layers.to_dict("records"):
        writer.writerow({column: _cell(record.get(column)) for column in REGRESSION_COLUMNS})
    return write_text_atomic(output_dir / "results.csv", buffer.getvalue())


def _cell(value):
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else value


def layer_table(results: Results) -> str:
    """Per-layer R² and Spearman with intervals and controls, one block per (position, subset)."""
    lines = []
    for (position, subset), rows in results.series().items():
        lines.append(f"{results.experiment} on {results.model.name}: regression probe at the {position} token, "
                     f"{subset} rows")
        lines.append(f"{'layer':>5}  {'R²':>7}  {'95% CI':>16}  {'Spearman':>8}  {'95% CI':>16}  "
                     f"{'shuffled R²':>11}  {'random wts R²':>13}")
        for r in rows:
            lines.append(f"{r.layer:>5}  {number(r.r2):>7}  {interval(r.r2_ci):>16}  {number(r.spearman):>8}  "
                         f"{interval(r.spearman_ci):>16}  {number(r.shuffled_r2):>11}  {number(r.random_weights_r2):>13}")
        mean = results.baseline("mean", subset)
        if mean:
            lines.append(f"mean-predictor baseline: R² {number(mean.r2)} {interval(mean.r2_ci)}")
        lines.append("")
    return "\n".join(lines)


def best_lines(name: str, results: Results) -> list[str]:
    """What ``probe run`` prints after the table: the best layer by R², and the nested choice."""
    lines = []
    for (position, subset), best in results.best_rows().items():
        lines.append(f"{name} [{position}, {subset}]: best layer {best.layer} R² {number(best.r2)} {interval(best.r2_ci)}, "
                     f"Spearman {number(best.spearman)} {interval(best.spearman_ci)}")
    for nested in results.best_layer or []:
        if nested["layer"] is not None:
            chosen = ", ".join(f"{layer} ({n}×)" for layer, n in nested["chosen"].items())
            lines.append(f"{name} [{nested['position']}, {nested['subset']}]: chosen on inner folds: layer {chosen}; "
                         f"outer R² {number(nested['r2'])} {interval(nested['r2_ci'])}")
    return lines


def summary_lines(results: Results) -> list[str]:
    """summary.md's regression body: the best layers, baselines and the nested choice."""
    data, settings = results.dataset, results.settings
    lines = [
        f"Model `{results.model.name}` ({results.model.layers} blocks), attention: {settings['attention']}. "
        f"Dataset `{data.name}`: {data.rows} rows, numeric labels (regression). "
        f"Evaluation: {evaluation_sentence(results.evaluation, settings)}.",
        *([f"Probe `{results.probe['name']}`: {results.probe['estimator']}."] if results.probe else []),
        "", "| position | subset | best layer | R² [95% CI] | Spearman [95% CI] | shuffled R² | random weights R² |"
            " layer 0 R² |", "|---|---|---|---|---|---|---|---|",
    ]
    for (position, subset), rows in results.series().items():
        best = max(rows, key=lambda r: -np.inf if np.isnan(r.r2) else r.r2)
        lines.append(f"| {position} | {subset} | {best.layer} | {number(best.r2)} {interval(best.r2_ci)} | "
                     f"{number(best.spearman)} {interval(best.spearman_ci)} | {number(best.shuffled_r2)} | "
                     f"{number(best.random_weights_r2)} | {number(rows[0].r2)} |")
    lines.append("")
    for name, baseline in results.baselines.items():
        if name.startswith("mean"):
            lines.append(f"- {name} baseline (each training part's mean): R² {number(baseline.r2)} "
                         f"{interval(baseline.r2_ci)}")
    chosen = [b for b in results.best_layer or [] if b.get("layer") is not None]
    if chosen:
        lines += ["", "Best layer chosen on inner folds of each outer training part (by R²), scored on the outer "
                      "test parts:", "", "| position | subset | chosen layer (times chosen) | R² [95% CI] | "
                      "Spearman [95% CI] |", "|---|---|---|---|---|"]
        for best in chosen:
            times = ", ".join(f"{layer} ({n})" for layer, n in best["chosen"].items())
            lines.append(f"| {best['position']} | {best['subset']} | {times} | {number(best['r2'])} "
                         f"{interval(best['r2_ci'])} | {number(best['spearman'])} {interval(best['spearman_ci'])} |")
    if results.statistics:
        lines += ["", f"Intervals: {results.statistics['interval']}. Not computed: "
                      f"{results.statistics.get('not_applicable', '')}."]
    return lines


# ---------------------------------------------------------------- report.html (plotly)


def curves_plotly(results: dict) -> dict:
    """report.html's view: R² and Spearman per layer with their 95 % bands as error bars, and controls."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    from plotly.colors import qualitative

    typed = Results.from_dict(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[name for _, name in SCORES], horizontal_spacing=0.08)
    for col, (score, _) in enumerate(SCORES, start=1):
        for n, ((position, subset), rows) in enumerate(typed.series().items()):
            colour = qualitative.Plotly[n % len(qualitative.Plotly)]  # one colour per series, in both panels
            layers, values = [r.layer for r in rows], [getattr(r, score) for r in rows]
            bands = [getattr(r, f"{score}_ci") or [v, v] for r, v in zip(rows, values)]
            error = dict(type="data", array=[b[1] - v for b, v in zip(bands, values)],
                         arrayminus=[v - b[0] for b, v in zip(bands, values)])
            fig.add_trace(go.Scatter(x=layers, y=values, error_y=error, mode="lines+markers", line=dict(color=colour),
                                     name=f"probe ({position}, {subset})", showlegend=col == 1), row=1, col=col)
            for control, dash in (("shuffled", "dot"), ("random_weights", "dash")):
                controlled = [getattr(r, f"{control}_{score}") for r in rows]
                if controlled[0] is not None:
                    fig.add_trace(go.Scatter(x=layers, y=controlled, mode="lines", line=dict(dash=dash, color=colour),
                                             name=f"{control.replace('_', ' ')} ({position}, {subset})",
                                             showlegend=col == 1), row=1, col=col)
    fig.update_layout(title=f"{results['experiment']} on {results['model']['name']}: R² and Spearman per layer",
                      height=420, template="plotly_white", hovermode="x unified", legend=dict(orientation="h", y=-0.25))
    return json.loads(fig.to_json())
