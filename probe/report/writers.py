"""Reports from Results: JSON, CSV, plots and a short Markdown summary, each written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from probe.pipeline.evaluation import accuracy_axis
from probe.pipeline.evaluation import sentence as evaluation_sentence
from probe.pipeline.results import LayerResult, Results
from probe.store.files import write_atomic, write_text_atomic

CSV_COLUMNS = (
    "position", "subset", "layer", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
    "shuffled_accuracy", "selectivity", "random_weights_accuracy", "reference_accuracy",
    "max_abs_diff_vs_reference",
    "permutation_accuracy", "permutation_p_value", "permutation_selectivity",
    "control_task_accuracy", "control_task_selectivity",
)


def as_results(results) -> Results:
    """Reporters take Results; a results dict (a plugin's, or results.json read back) is converted."""
    return results if isinstance(results, Results) else Results.from_dict(results)


def as_dict(results) -> dict:
    """The results as results.json holds them: the form the html page and older plugins read."""
    return results.to_dict() if isinstance(results, Results) else results


def series(results) -> dict[tuple[str, str], list[dict]]:
    """Layer rows, as dicts, grouped by (position, subset), in layer order."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in as_dict(results)["layers"]:
        grouped.setdefault((row["position"], row["subset"]), []).append(row)
    return {key: sorted(rows, key=lambda r: r["layer"]) for key, rows in grouped.items()}


def write_json(results: Results, output_dir: Path) -> Path:
    return write_text_atomic(output_dir / "results.json", as_results(results).to_json())


def write_csv(results: Results, output_dir: Path) -> Path:
    results = as_results(results)
    metric_names = sorted({name for row in results.rows for name in (row.metrics or {})})
    measure_names = sorted({name for row in results.rows for name in _measure_values(row)})
    dev = ["dev_accuracy"] if any(row.dev_accuracy is not None for row in results.rows) else []
    columns = list(CSV_COLUMNS) + dev + metric_names + measure_names
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in results.rows:
        values = row.to_dict()
        values.update(values.get("metrics", {}))
        values.update(_measure_values(row))
        writer.writerow({k: values.get(k, "") for k in columns})
    return write_text_atomic(output_dir / "results.csv", buffer.getvalue())


def _measure_values(row: LayerResult) -> dict[str, float]:
    """A row's plugin measures as flat columns: ``mdl_codelength``, ``mdl_compression``, …"""
    return {f"{measure}_{name}": value for measure, values in (row.measures or {}).items()
            for name, value in values.items()}


def layer_table(results: Results) -> str:
    """Per-layer accuracy with its controls, one block per (position, subset), for the terminal."""
    results = as_results(results)
    lines = []
    for (position, subset), rows in results.series().items():
        lines.append(f"{results.experiment} on {results.model.name}: probe at the {position} token, {subset} rows")
        tested = rows[0].permutation_p_value is not None
        lines.append(f"{'layer':>5}  {'accuracy':>15}  {'macro-F1':>8}  {'shuffled':>8}  {'random wts':>10}"
                     + (f"  {'perm. p':>7}" if tested else ""))
        for r in rows:
            lines.append(
                f"{r.layer:>5}  {r.accuracy:>7.3f} ± {r.accuracy_std:.3f}  {r.macro_f1:>8.3f}  "
                f"{_num(r.shuffled_accuracy):>8}  {_num(r.random_weights_accuracy):>10}"
                + (f"  {_p(r.permutation_p_value):>7}" if tested else "")
            )
        majority = results.baseline("majority", subset)
        if majority:
            lines.append(f"majority-class baseline: {majority.accuracy:.3f}")
        lines.append("")
    return "\n".join(lines)


def write_summary(results: Results, output_dir: Path) -> Path:
    results = as_results(results)
    lines = [f"# {results.experiment}", ""]
    if results.description:
        lines += [results.description.strip(), ""]
    model, data, settings = results.model, results.dataset, results.settings
    lines += [
        f"Model `{model.name}` ({model.layers} layers), attention: {settings['attention']}. "
        f"Dataset `{data.name}`: {data.rows} rows, senses {', '.join(data.labels)}. "
        f"Evaluation: {evaluation_sentence(results.evaluation, settings)}.",
        *([f"Probe `{results.probe['name']}`: {probe_sentence(results.probe)}."] if results.probe else []),
        "",
        "| position | subset | best layer | accuracy | macro-F1 | selectivity | layer 0 | random weights |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (position, subset), rows in results.series().items():
        best = max(rows, key=lambda r: r.accuracy)
        lines.append(
            f"| {position} | {subset} | {best.layer} | {accuracy_text(best)} | "
            f"{best.macro_f1:.3f} | {_num(best.selectivity)} | {rows[0].accuracy:.3f} | "
            f"{_num(best.random_weights_accuracy)} |"
        )
    lines.append("")
    for name, baseline in results.baselines.items():
        if name.startswith("majority"):
            lines.append(f"- {name} baseline accuracy: {baseline.accuracy:.3f}")
    lines += controls_and_measures(results)
    lines += intervention_lines(results)
    if data.skipped_rows:
        lines += ["", f"Skipped {len(data.skipped_rows)} bad row(s):"] + [f"- {p}" for p in data.skipped_rows]
    lines += ["", f"Files: {', '.join(report_files(settings.get('reporters', [])))}.", ""]
    return write_text_atomic(output_dir / "summary.md", "\n".join(lines))


def intervention_lines(results: Results) -> list[str]:
    """What the run changed in the model's activations (results.json's ``interventions``), or nothing."""
    if not results.interventions:
        return []
    lines = ["", "**Intervened on.** This run changed the model's activations:"]
    for entry in results.interventions:
        points = entry.get("hook_points")
        where = ", ".join(points[:6]) + (f" and {len(points) - 6} more" if len(points) > 6 else "") if points \
            else "hook points not known"
        version = f" {entry['version']}" if entry.get("version") else ""
        note = f" ({entry['note']})" if entry.get("note") else ""
        lines.append(f"- {entry['kind']} by plugin `{entry['plugin']}`{version} at {where}{note}")
    return lines


# What each built-in reporter writes; summary.md lists only the files the run's reporters write.
REPORTER_FILES = {
    "json": ["results.json"], "csv": ["results.csv"],
    "plots": ["accuracy, pca and attention figures (.png; .svg and .pdf with options.plots.formats)"],
    "summary": ["summary.md"], "html": ["report.html", "report_data.json"],
}


def report_files(reporters: list[str]) -> list[str]:
    return [name for reporter in reporters
            for name in REPORTER_FILES.get(reporter, [f"what the {reporter} reporter writes"])]


def controls_and_measures(results: Results) -> list[str]:
    """Summary lines: per layer, the permutation test, the control task and the plugin measures, when
    the config asked for any of them."""
    rows = results.rows
    columns = [(title, get) for title, get in _STRONGER_COLUMNS if any(get(r) is not None for r in rows)]
    measure_names = sorted({name for r in rows for name in _measure_values(r)})
    if not columns and not measure_names:
        return []
    lines = ["", "## Controls and measures per layer", ""]
    permutations = results.settings.get("permutations")
    if any(r.permutation_p_value is not None for r in rows):
        lines += [(f"Permutation test: {permutations} label permutations within groups, on the probe's folds; "
                   "p = (1 + #permuted ≥ observed) / (1 + permutations). Selectivity = accuracy − the mean "
                   "accuracy of the permutations (perm.) or of the Hewitt–Liang control task (ctrl)."), ""]
    header = ["position", "subset", "layer", "accuracy"] + [t for t, _ in columns] + measure_names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (position, subset), series_rows in results.series().items():
        for r in series_rows:
            measures = _measure_values(r)
            cells = [position, subset, str(r.layer), f"{r.accuracy:.3f}"]
            cells += [_p(get(r)) if title == "permutation p" else _num(get(r)) for title, get in columns]
            cells += [_num(measures.get(name)) for name in measure_names]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


_STRONGER_COLUMNS = (
    ("permutation p", lambda r: r.permutation_p_value),
    ("selectivity (perm.)", lambda r: r.permutation_selectivity),
    ("control task", lambda r: r.control_task_accuracy),
    ("selectivity (ctrl)", lambda r: r.control_task_selectivity),
)


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"  # 1/101 is 0.0099: three decimals would round it to 0.010


def probe_sentence(probe: dict) -> str:
    """The estimator and, spelt out, its regularisation strength (scikit-learn's default C is 1.0)."""
    text = f"`{probe['estimator']}`"
    return text + (f", regularisation C = {probe['C']}" if isinstance(probe.get("C"), (int, float)) else "")


def accuracy_text(row: LayerResult) -> str:
    """± the fold std under cross-validation; a fixed split's one test score has no spread to show."""
    return _pm(row.accuracy, row.accuracy_std) if len(row.fold_accuracies) > 1 else f"{row.accuracy:.3f}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LAYER_AXIS = "layer (hidden state; 0 = embeddings)"  # block i reads layer i and writes layer i + 1
FIGURE_FORMATS = ("png", "svg", "pdf")  # PNG to look at, SVG and PDF (vector) for a paper
# Only PNG unless asked (options: {plots: {formats: [png, svg, pdf]}}): each format is a full redraw,
# and drawing was most of a rerun's time.
DEFAULT_FORMATS = ("png",)


def _save(fig, path: Path, formats=DEFAULT_FORMATS) -> Path:
    """``path`` (a .png), and the same figure in the other ``formats`` beside it; returns the PNG's path."""
    import matplotlib

    # Text stays text (SVG) and fonts are embedded as TrueType (PDF), as journals and editors want.
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for fmt in dict.fromkeys(("png", *formats)):
            write_atomic(path.with_suffix(f".{fmt}"),
                         lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=150, bbox_inches="tight", format=fmt))
    _pyplot().close(fig)
    return path


def plot_accuracy(results: Results, output_dir: Path, formats=DEFAULT_FORMATS) -> Path:
    return _save(accuracy_figure(as_results(results)), output_dir / "accuracy.png", formats)


def accuracy_figure(results: Results):
    """Probe accuracy per layer (± fold std) with its controls, one panel per subset."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    grouped = results.series()
    subsets = list(dict.fromkeys(subset for _, subset in grouped))
    cols = min(len(subsets), 3)  # split_by panels wrap after three, so each stays readable
    n_rows = -(-len(subsets) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.2 * cols, 4.0 * n_rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(subsets):]:
        ax.set_visible(False)
    for ax, subset in zip(axes.flat, subsets):
        for (position, sub), rows in grouped.items():
            if sub == subset:
                _plot_series(ax, position, rows)
        majority = results.baseline("majority", subset)
        if majority:
            ax.axhline(majority.accuracy, color="grey", lw=1, label="majority class")
        ax.set_title(f"{subset} rows", fontsize=11)
        ax.set_xlabel(LAYER_AXIS)
        ax.set_ylabel(accuracy_axis(results.evaluation))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper center", ncol=min(len(names), 4), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{results.experiment} on {results.model.name}: probe accuracy per layer")
    fig.tight_layout()
    return fig


def _plot_series(ax, position: str, rows: list[LayerResult]) -> None:
    layers = [r.layer for r in rows]
    acc = np.array([r.accuracy for r in rows])
    std = np.array([r.accuracy_std for r in rows])
    (line,) = ax.plot(layers, acc, marker="o", label=f"probe at {position} token")
    ax.fill_between(layers, acc - std, acc + std, color=line.get_color(), alpha=0.2)
    if rows[0].shuffled_accuracy is not None:
        ax.plot(layers, [r.shuffled_accuracy for r in rows], ls=":", color=line.get_color(),
                label=f"shuffled labels ({position})")
    if rows[0].random_weights_accuracy is not None:
        ax.plot(layers, [r.random_weights_accuracy for r in rows], ls="--", color=line.get_color(),
                alpha=0.6, label=f"random weights ({position})")
    if rows[0].permutation_accuracy is not None:
        _plot_permutations(ax, position, rows, line.get_color())
    if rows[0].control_task_accuracy is not None:
        ax.plot(layers, [r.control_task_accuracy for r in rows], ls="-.", color=line.get_color(),
                alpha=0.6, label=f"control task ({position})")


def _plot_permutations(ax, position: str, rows: list[LayerResult], colour) -> None:
    """The permuted-label accuracies' 5–95 % band and mean; layers with p < 0.05 starred on the probe line."""
    layers = [r.layer for r in rows]
    low, high = zip(*(np.percentile(r.permutation_accuracies or [r.permutation_accuracy], [5, 95]) for r in rows))
    ax.fill_between(layers, low, high, color="grey", alpha=0.15, label=f"permuted labels, 5–95 % ({position})")
    ax.plot(layers, [r.permutation_accuracy for r in rows], ls=(0, (1, 3)), color="grey")
    significant = [r for r in rows if r.permutation_p_value is not None and r.permutation_p_value < 0.05]
    ax.scatter([r.layer for r in significant], [r.accuracy for r in significant], marker="*", s=70,
               color=colour, zorder=3, label=f"p < 0.05, permutation test ({position})")


def plot_pca(results: Results, output_dir: Path, store, labels, position: str = "target",
             formats=DEFAULT_FORMATS) -> Path:
    """2-D PCA of the target vectors at the first, a middle and the best layer, coloured by sense."""
    from probe.report.extras import pca2

    results = as_results(results)
    plt = _pyplot()
    layers = sorted({r.layer for r in results.rows})
    best = results.best_rows().get((position, "all"))
    shown = list(dict.fromkeys([layers[0], layers[len(layers) // 2], best.layer if best else layers[-1]]))
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.8 * len(shown), 4.4), squeeze=False)
    for ax, layer in zip(axes[0], shown):
        points, explained = pca2(store.layer(position, layer))
        for sense in sorted(set(labels.tolist())):
            chosen = labels == sense
            ax.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7, label=sense)
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else ""))
        ax.set_xlabel(f"PC1 ({explained[0]:.1%} of variance)")
        ax.set_ylabel(f"PC2 ({explained[1]:.1%} of variance)")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{results.experiment} on {results.model.name}: {position}-token vectors, "
                 "first two principal components of each layer")
    fig.tight_layout()
    return _save(fig, output_dir / "pca.png", formats)


def plot_attention(tokens: list[str], target_index: int, patterns: dict[int, np.ndarray], title: str,
                   output_dir: Path, formats=DEFAULT_FORMATS) -> Path:
    """For a few blocks (``patterns`` maps block → (heads, keys)): each head's attention from the target
    token over the sentence."""
    plt = _pyplot()
    layers = sorted(patterns)
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(6, 0.4 * len(tokens)), 2.4 * len(layers)),
                             squeeze=False, sharex=True)
    for ax, layer in zip(axes[:, 0], layers):
        weights = patterns[layer]  # (heads, keys)
        image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(tokens)), tokens, rotation=70, fontsize=7)
        ax.set_yticks(range(weights.shape[0]), [str(h) for h in range(weights.shape[0])], fontsize=6)
        ax.set_title(f"block {layer} (reads layer {layer}, writes layer {layer + 1})", fontsize=9)
        ax.set_ylabel("head")
    axes[-1, 0].set_xlabel("token attended to (key); the target word in red")
    axes[-1, 0].get_xticklabels()[target_index].set_color("red")  # the target word
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=9)
    return _save(fig, output_dir / "attention.png", formats)


def plot_runs(runs: list[Results], output: Path, subsets: list[str] | None = None) -> Path:
    """Several runs side by side (one panel per run): accuracy per layer for every (position, subset)
    series, the majority baseline as a grey line. Layers are shown as a fraction of depth so that models
    of different depths line up."""
    from matplotlib.ticker import PercentFormatter

    runs = [as_results(run) for run in runs]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False, sharey=True)
    styles = {"target": "-", "last": "--"}
    for ax, results in zip(axes[0], runs):
        depth = max(results.model.layers, 1)
        for (position, subset), rows in results.series().items():
            if subsets and subset not in subsets:
                continue
            x = [r.layer / depth for r in rows]
            ax.plot(x, [r.accuracy for r in rows], ls=styles.get(position, "-"), marker=".",
                    label=f"cue {subset}, at {position} token" if subset != "all" else f"all rows, at {position}")
        majority = [b.accuracy for name, b in results.baselines.items() if name.startswith("majority")]
        if majority:
            ax.axhline(max(majority), color="grey", lw=1, label="majority class")
        ax.set_title(f"{results.model.name} ({results.model.layers} layers)")
        ax.set_xlabel("depth (layer / number of layers)")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cross-validated accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(runs[0].experiment)
    return _save(fig, Path(output))
