"""The report's fixed plotly figures, built in Python: accuracy per layer with its controls, and several
runs compared by depth. (The views driven by a slider are drawn in the browser, by static/report.js.)"""

from __future__ import annotations

import json
import math

from probe.pipeline.evaluation import accuracy_axis
from probe.report.legend import comparison_title, position_words, run_names, sense_colours

LAYER_AXIS = "layer (hidden state; 0 = embeddings)"
SCORE_NAMES = {"accuracy": "accuracy", "r2": "R²"}  # what runs compared are plotted by: their task's score
POSITION_COLOURS = {"target": "#1f77b4", "last": "#ff7f0e", "first": "#2ca02c", "mean": "#9467bd"}
OTHER_POSITION_COLOURS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]  # {index: N}, {span: …}
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
# control → (results key, line dash, legend name)
CONTROLS = (
    ("shuffled_accuracy", "dot", "shuffled labels"),
    ("random_weights_accuracy", "dash", "random weights"),
    ("reference_accuracy", "dashdot", "HF reference attention"),
    ("permutation_accuracy", "longdash", "permuted labels (mean)"),
    ("control_task_accuracy", "longdashdot", "control task"),
)
PANELS_PER_ROW = 3


def series(results: dict) -> dict[tuple[str, str], list[dict]]:
    """results.json's layer rows grouped by (position, subset), in layer order."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in results["layers"]:
        grouped.setdefault((row["position"], row["subset"]), []).append(row)
    return {key: sorted(rows, key=lambda r: r["layer"]) for key, rows in grouped.items()}


def subsets_of(results: dict) -> list[str]:
    return list(dict.fromkeys(subset for _, subset in series(results)))


def majority(results: dict, subset: str) -> float | None:
    baseline = results["baselines"].get("majority" if subset == "all" else f"majority[{subset}]")
    return baseline["accuracy"] if baseline else None


def accuracy_figure(results: dict) -> dict:
    """One panel per subset (split_by side by side, wrapped after three): the probe's accuracy with its
    fold spread (error bars ± std; hover lists every fold), each control, and the majority class."""
    from plotly.subplots import make_subplots

    subsets = subsets_of(results)
    cols = min(len(subsets), PANELS_PER_ROW)
    n_rows = math.ceil(len(subsets) / cols)
    fig = make_subplots(rows=n_rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.16, subplot_titles=[f"{s} rows" for s in subsets])
    for n, subset in enumerate(subsets):
        where = dict(row=n // cols + 1, col=n % cols + 1)
        panel = {position: rows for (position, sub), rows in series(results).items() if sub == subset}
        for position, rows in panel.items():
            for trace in _position_traces(position, rows, first_panel=n == 0):
                fig.add_trace(trace, **where)
        rows = next(iter(panel.values()))
        base = majority(results, subset)
        if base is not None:
            fig.add_trace(_majority_trace(rows, base, n == 0), **where)
        fig.update_xaxes(title_text=LAYER_AXIS, dtick=_tick_step(rows), **where)
        fig.update_yaxes(range=[0, 1.03], **where)
        if where["col"] == 1:
            fig.update_yaxes(title_text=accuracy_axis(results.get("evaluation")), **where)
    fig.update_layout(
        title=f"{results['experiment']} on {results['model']['name']}: probe accuracy per layer",
        height=380 * n_rows + 80, hovermode="x unified", template="plotly_white",
        legend=dict(orientation="h", y=-0.25 if n_rows == 1 else -0.1), margin=dict(t=80, b=40),
    )
    return json.loads(fig.to_json())


def position_colour(position: str) -> str:
    """A position's line colour: fixed for the named positions, and the same for an index or span in every
    figure (chosen by its name's letters, not by the order the run lists it in)."""
    if position in POSITION_COLOURS:
        return POSITION_COLOURS[position]
    return OTHER_POSITION_COLOURS[sum(map(ord, position)) % len(OTHER_POSITION_COLOURS)]


def _position_traces(position: str, rows: list[dict], first_panel: bool) -> list:
    import plotly.graph_objects as go

    colour = position_colour(position)
    layers = [r["layer"] for r in rows]
    folds = [", ".join(f"{a:.2f}" for a in r.get("fold_accuracies", [])) for r in rows]
    traces = [go.Scatter(
        x=layers, y=[r["accuracy"] for r in rows], mode="lines+markers", name=f"probe at {position_words(position)}",
        legendgroup=position, showlegend=first_panel, line=dict(color=colour), **_spread(rows, folds, position),
    )]
    for key, dash, name in CONTROLS:
        if key in rows[0]:
            traces.append(go.Scatter(
                x=layers, y=[r[key] for r in rows], mode="lines", name=f"{name} ({position})",
                legendgroup=f"{position}-{key}", showlegend=first_panel, line=dict(color=colour, dash=dash, width=1.5),
                opacity=0.75, hovertemplate=f"{name} ({position}): %{{y:.3f}}<extra></extra>",
            ))
    return traces


def _spread(rows: list[dict], folds: list[str], position: str) -> dict:
    """Error bars: the 95 % interval (asymmetric), or ± the fold std for a run from before intervals."""
    if all(r.get("accuracy_ci") for r in rows):
        intervals = [f"[{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]" for r in rows]
        return dict(
            error_y=dict(type="data", symmetric=False, thickness=1, width=3,
                         array=[r["accuracy_ci"][1] - r["accuracy"] for r in rows],
                         arrayminus=[r["accuracy"] - r["accuracy_ci"][0] for r in rows]),
            customdata=[[ci, fold] for ci, fold in zip(intervals, folds)],
            hovertemplate=(f"probe at {position}: %{{y:.3f}}, 95% CI %{{customdata[0]}} "
                           "(folds: %{customdata[1]})<extra></extra>"))
    return dict(
        error_y=dict(type="data", array=[r["accuracy_std"] for r in rows], thickness=1, width=3), customdata=folds,
        hovertemplate=f"probe at {position}: %{{y:.3f}} ± %{{error_y.array:.3f}} (folds: %{{customdata}})<extra></extra>")


def recall_figure(results: dict) -> dict:
    """Each sense's out-of-fold recall per layer: one panel per subset, a line per sense (dashed: the
    second position)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    subsets = subsets_of(results)
    cols = min(len(subsets), PANELS_PER_ROW)
    n_rows = math.ceil(len(subsets) / cols)
    fig = make_subplots(rows=n_rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.06,
                        vertical_spacing=0.16, subplot_titles=[f"{s} rows" for s in subsets])
    senses = list(dict.fromkeys(sense for rows in series(results).values() for r in rows
                                for sense in r.get("per_sense_recall", {})))
    positions = list(dict.fromkeys(position for position, _ in series(results)))
    colours = sense_colours(results["dataset"].get("labels") or senses)  # the colours of every other figure
    for n, subset in enumerate(subsets):
        where = dict(row=n // cols + 1, col=n % cols + 1)
        for (position, sub), rows in series(results).items():
            if sub != subset:
                continue
            for sense in senses:
                fig.add_trace(go.Scatter(
                    x=[r["layer"] for r in rows], y=[r.get("per_sense_recall", {}).get(sense) for r in rows],
                    mode="lines+markers", name=f"{sense} ({position})", legendgroup=f"{sense}-{position}",
                    showlegend=n == 0, line=dict(color=colours.get(sense, "#7f7f7f"),
                                                 dash="solid" if position == positions[0] else "dash"),
                    hovertemplate=f"{sense} at {position}: %{{y:.3f}}<extra></extra>"), **where)
        fig.update_xaxes(title_text=LAYER_AXIS, **where)
        fig.update_yaxes(range=[0, 1.03], **where)
        if where["col"] == 1:
            fig.update_yaxes(title_text="recall of each sense", **where)
    fig.update_layout(title=f"{results['experiment']} on {results['model']['name']}: recall per sense and layer",
                      height=380 * n_rows + 80, template="plotly_white",
                      legend=dict(orientation="h", y=-0.25 if n_rows == 1 else -0.1), margin=dict(t=80, b=40))
    return json.loads(fig.to_json())


def _majority_trace(rows: list[dict], accuracy: float, first_panel: bool):
    import plotly.graph_objects as go

    layers = [r["layer"] for r in rows]
    return go.Scatter(x=[layers[0], layers[-1]], y=[accuracy, accuracy], mode="lines", name="majority class",
                      legendgroup="majority", showlegend=first_panel, line=dict(color="grey", width=1),
                      hovertemplate="majority class: %{y:.3f}<extra></extra>")


def _tick_step(rows: list[dict]) -> int:
    return max(1, math.ceil(len(rows) / 16))


def comparison_figure(runs: list[dict], folders: list[str | None] | None = None) -> dict:
    """Several runs on one axis: accuracy (R² for regression runs) against depth (layer / number of
    blocks), so that models of different depth line up; hover gives each point's layer. Each run is named
    by its experiment and model (and its folder, ``folders``, where two runs share both)."""
    import plotly.graph_objects as go

    score = "r2" if runs[0].get("task") == "regression" else "accuracy"  # the page refuses a mix
    fig = go.Figure()
    dashes = {"target": "solid", "last": "dash"}
    folders = folders or [None] * len(runs)
    names = run_names([(r["experiment"], r["model"]["name"], folder) for r, folder in zip(runs, folders)])
    for n, (results, run) in enumerate(zip(runs, names)):
        depth = max(results["model"]["layers"], 1)
        colour = RUN_COLOURS[n % len(RUN_COLOURS)]
        for (position, subset), rows in series(results).items():
            name = f"{run}: {position_words(position)}, {subset} rows"
            fig.add_trace(go.Scatter(
                x=[r["layer"] / depth for r in rows], y=[r[score] for r in rows], mode="lines+markers",
                name=name, line=dict(color=colour, dash=dashes.get(position, "dot")),
                customdata=[r["layer"] for r in rows],
                hovertemplate=f"{name}<br>layer %{{customdata}}: %{{y:.3f}}<extra></extra>",
            ))
    fig.update_layout(
        title=f"{comparison_title([r['experiment'] for r in runs])}: probe {SCORE_NAMES[score]} by relative depth",
        template="plotly_white", height=460,
        xaxis=dict(title="depth (layer / number of blocks)", tickformat=".0%", range=[-0.02, 1.02]),
        yaxis=dict(title=f"cross-validated {SCORE_NAMES[score]}", range=[0, 1.03] if score == "accuracy" else None),
        legend=dict(orientation="h", y=-0.2),
    )
    return json.loads(fig.to_json())
