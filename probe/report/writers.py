"""Reports from Results: JSON, CSV, plots and a short Markdown summary, each written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from probe.pipeline.evaluation import accuracy_axis
from probe.pipeline.evaluation import sentence as evaluation_sentence
from probe.pipeline.results import LayerResult, Results
from probe.report import regression
from probe.report.legend import comparison_title, position_words, run_names, sense_colours
from probe.report.numbers import interval, number
from probe.store.files import write_atomic, write_text_atomic

CSV_COLUMNS = (
    "position", "subset", "layer", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
    "shuffled_accuracy", "selectivity", "random_weights_accuracy", "reference_accuracy",
    "max_abs_diff_vs_reference",
    "permutation_accuracy", "permutation_p_value", "permutation_selectivity",
    "control_task_accuracy", "control_task_selectivity",
    "accuracy_ci_low", "accuracy_ci_high", "permutation_p_holm", "permutation_p_bh",
    "control_task_selectivity_ci_low", "control_task_selectivity_ci_high",
)


def as_results(results) -> Results:
    """Reporters take Results; a results dict (a plugin's, or results.json read back) is converted."""
    return results if isinstance(results, Results) else Results.from_dict(results)


def as_dict(results) -> dict:
    """The results as results.json holds them: the form the html page and older plugins read."""
    return results.to_dict() if isinstance(results, Results) else results


def series(results) -> dict[tuple[str, str], list[dict]]:
    """Layer rows, as dicts, grouped by (position, subset), in layer order."""
    from probe.report.figures import series as grouped

    return grouped(as_dict(results))


def write_json(results: Results, output_dir: Path) -> Path:
    return write_text_atomic(output_dir / "results.json", as_results(results).to_json())


def write_csv(results: Results, output_dir: Path) -> Path:
    results = as_results(results)
    if results.task == "regression":
        return regression.write_csv(results, output_dir)
    metric_names = sorted({name for row in results.rows for name in (row.metrics or {})})
    measure_names = sorted({name for row in results.rows for name in _measure_values(row)})
    dev = ["dev_accuracy"] if any(row.dev_accuracy is not None for row in results.rows) else []
    recalls = [f"recall_{sense}" for sense in dict.fromkeys(s for row in results.rows for s in row.per_sense_recall)]
    columns = list(CSV_COLUMNS) + dev + recalls + metric_names + measure_names
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in results.rows:
        values = row.to_dict()
        values.update(values.get("metrics", {}))
        values.update(_measure_values(row))
        values.update(_interval_and_recalls(row))
        writer.writerow({k: values.get(k, "") for k in columns})
    return write_text_atomic(output_dir / "results.csv", buffer.getvalue())


def _interval_and_recalls(row: LayerResult) -> dict[str, float]:
    """The interval as two columns, and each sense's recall as ``recall_<sense>``."""
    low, high = row.accuracy_ci or ("", "")
    selectivity_low, selectivity_high = row.control_task_selectivity_ci or ("", "")
    return {"accuracy_ci_low": low, "accuracy_ci_high": high, "control_task_selectivity_ci_low": selectivity_low,
            "control_task_selectivity_ci_high": selectivity_high,
            **{f"recall_{sense}": recall for sense, recall in row.per_sense_recall.items()}}


def _measure_values(row: LayerResult) -> dict[str, float]:
    """A row's plugin measures as flat columns: ``mdl_codelength``, ``mdl_compression``, …"""
    return {f"{measure}_{name}": value for measure, values in (row.measures or {}).items()
            for name, value in values.items()}


def layer_table(results: Results) -> str:
    """Per-layer accuracy with its controls, one block per (position, subset), for the terminal."""
    results = as_results(results)
    if results.task == "regression":
        return regression.layer_table(results)
    lines = []
    for (position, subset), rows in results.series().items():
        lines.append(f"{results.experiment} on {results.model.name}: probe at the {position_words(position)}, {subset} rows")
        tested = rows[0].permutation_p_value is not None
        lines.append(f"{'layer':>5}  {'accuracy':>15}  {'95% CI':>13}  {'macro-F1':>8}  {'shuffled':>8}  "
                     f"{'random wts':>10}" + (f"  {'perm. p':>7}" if tested else ""))
        for r in rows:
            lines.append(
                f"{r.layer:>5}  {r.accuracy:>7.3f} ± {r.accuracy_std:.3f}  {interval(r.accuracy_ci):>13}  {r.macro_f1:>8.3f}  "
                f"{number(r.shuffled_accuracy):>8}  {number(r.random_weights_accuracy):>10}"
                + (f"  {_p(r.permutation_p_value):>7}" if tested else "")
            )
        majority = results.baseline("majority", subset)
        if majority:
            lines.append(f"majority-class baseline: {majority.accuracy:.3f}")
        lines.append("")
    return "\n".join(lines)


def write_summary(results: Results, output_dir: Path, reporters=()) -> Path:
    """summary.md; ``reporters``: what the run's other reporters did (``ReporterOutcome``s), when known."""
    results = as_results(results)
    lines = [f"# {results.experiment}", ""]
    if results.description:
        lines += [results.description.strip(), ""]
    model, data, settings = results.model, results.dataset, results.settings
    if results.task == "regression":
        lines += regression.summary_lines(results)
        lines += intervention_lines(results) + diagnostics_section(results)
        lines += ["", *reporter_lines(results, reporters), ""]
        return write_text_atomic(output_dir / "summary.md", "\n".join(lines))
    lines += [
        f"Model `{model.name}` ({model.layers} blocks), attention: {settings['attention']}. "
        f"Dataset `{data.name}`: {data.rows} rows, labels {', '.join(data.labels)}. "
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
            f"{best.macro_f1:.3f} | {number(best.selectivity)} | {rows[0].accuracy:.3f} | "
            f"{number(best.random_weights_accuracy)} |"
        )
    lines.append("")
    for name, baseline in results.baselines.items():
        if name.startswith("majority"):
            lines.append(f"- {name} baseline accuracy: {baseline.accuracy:.3f}")
    lines += statistics_lines(results)
    lines += controls_and_measures(results)
    lines += intervention_lines(results)
    if data.skipped_rows:
        lines += ["", f"Skipped {len(data.skipped_rows)} bad row(s):"] + [f"- {p}" for p in data.skipped_rows]
    lines += diagnostics_section(results)
    lines += ["", *reporter_lines(results, reporters), ""]
    return write_text_atomic(output_dir / "summary.md", "\n".join(lines))


def reporter_lines(results: Results, reporters=()) -> list[str]:
    """The reporters that ran and the files they wrote; apart, those that were skipped, each with its
    reason. Outside a run (nothing noted), the files of the reporters the settings name."""
    if not reporters:
        return [f"Files: {', '.join(report_files(results.settings.get('reporters', []), results.task))}."]
    ran = [o.name for o in reporters if o.status == "ran"]
    ran += [] if "summary" in ran else ["summary"]  # this one, writing now
    lines = [f"Reporters that ran: {', '.join(ran)}. Files: {', '.join(report_files(ran, results.task))}."]
    skipped = [o for o in reporters if o.status != "ran"]
    if skipped:
        lines += ["", "Reporters that did not run:"] + [f"- {o.name}: {o.status} ({o.reason})" for o in skipped]
    return lines


def diagnostics_section(results: Results) -> list[str]:
    """summary.md's warnings: each diagnostic, what it names and what to do."""
    if not results.diagnostics:
        return []
    lines = ["", f"## Read with care: {len(results.diagnostics)} warning(s)", ""]
    for d in results.diagnostics:
        lines.append(f"- **{d.code}**: {d.message}" + (f". What to do: {d.advice}." if d.advice else ""))
    return lines


def diagnostic_lines(results: Results, with_advice: bool = True) -> list[str]:
    """The console's warnings: one line per diagnostic, and its advice indented below unless ``with_advice``
    is off (``--quiet``)."""
    lines = []
    for d in results.diagnostics:
        lines.append(f"warning: {d.line()}")
        if with_advice and d.advice:
            lines.append(f"  what to do: {d.advice}")
    return lines


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
    "plots": ["accuracy, recall, pca, confusion and attention figures (.png; .svg and .pdf with options.plots.formats)"],
    "summary": ["summary.md"], "html": ["report.html", "report_data.json"],
}


# A regression run's figures instead (probe/report/regression_figures.py).
REGRESSION_FILES = {"plots": ["regression and scatter figures (.png; .svg and .pdf with options.plots.formats)"],
                    "html": ["report.html"]}


def report_files(reporters: list[str], task: str = "classification") -> list[str]:
    files = {**REPORTER_FILES, **(REGRESSION_FILES if task == "regression" else {})}
    return [name for reporter in reporters
            for name in files.get(reporter, [f"what the {reporter} reporter writes"])]


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
            cells += [_p(get(r)) if title.startswith("permutation p") else
                      interval(get(r)) if title.endswith("95% CI") else number(get(r)) for title, get in columns]
            cells += [number(measures.get(name)) for name in measure_names]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


_STRONGER_COLUMNS = (
    ("permutation p", lambda r: r.permutation_p_value),
    ("permutation p (Holm)", lambda r: r.permutation_p_holm),
    ("permutation p (BH)", lambda r: r.permutation_p_bh),
    ("selectivity (perm.)", lambda r: r.permutation_selectivity),
    ("control task", lambda r: r.control_task_accuracy),
    ("selectivity (ctrl)", lambda r: r.control_task_selectivity),
    ("selectivity (ctrl) 95% CI", lambda r: r.control_task_selectivity_ci),
)


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"  # 1/101 is 0.0099: three decimals would round it to 0.010


def probe_sentence(probe: dict) -> str:
    """The estimator and, spelt out, its regularisation strength (scikit-learn's default C is 1.0)."""
    text = f"`{probe['estimator']}`"
    return text + (f", regularisation C = {probe['C']}" if isinstance(probe.get("C"), (int, float)) else "")


def accuracy_text(row: LayerResult) -> str:
    """The accuracy with its 95 % interval; a run from before intervals: ± the fold std under
    cross-validation (a fixed split's one test score has no spread to show)."""
    if row.accuracy_ci:
        return f"{row.accuracy:.3f} {interval(row.accuracy_ci)}"
    return _pm(row.accuracy, row.accuracy_std) if len(row.fold_accuracies) > 1 else f"{row.accuracy:.3f}"


def statistics_lines(results: Results) -> list[str]:
    """Summary lines: how the intervals were made, the best layer chosen without peeking, paired tests."""
    lines = []
    if results.statistics:
        lines += ["", f"Intervals: {results.statistics['interval']}."]
    if results.best_layer:
        lines += ["", "## Best layer, chosen without peeking", "",
                  "Each outer training part's inner folds pick a layer; the outer test part scores it.", "",
                  "| position | subset | chosen layer (times chosen) | outer accuracy | 95% CI |", "|---|---|---|---|---|"]
        for best in results.best_layer:
            if best["layer"] is None:
                lines.append(f"| {best['position']} | {best['subset']} | none: {best['reason']} | – | – |")
                continue
            chosen = ", ".join(f"{layer} ({n}×)" for layer, n in best["chosen"].items())
            lines.append(f"| {best['position']} | {best['subset']} | {chosen} | {best['accuracy']:.3f} | "
                         f"{interval(best['accuracy_ci'])} |")
    paired = (results.statistics or {}).get("paired")
    if paired:
        lines += ["", "## Paired tests between layers (same rows)", "",
                  "| position | subset | A | B | A − B | 95% CI | only A right | only B right | McNemar p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for test in paired:
            lines.append(f"| {test['position']} | {test['subset']} | {test['a']} | {test['b']} | "
                         f"{test['difference']:+.3f} | {interval(test['ci'])} | {test['a_only']} | {test['b_only']} | "
                         f"{_p(test['p_value'])} |")
    return lines


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


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
    """Probe accuracy per layer (its 95 % interval as a band) with its controls, one panel per subset."""
    grouped = results.series()
    subsets = list(dict.fromkeys(subset for _, subset in grouped))
    fig, axes = _subset_panels(subsets)
    for ax, subset in zip(axes.flat, subsets):
        for (position, sub), rows in grouped.items():
            if sub == subset:
                _plot_series(ax, position, rows)
        majority = results.baseline("majority", subset)
        if majority:
            ax.axhline(majority.accuracy, color="grey", lw=1, label="majority class")
        _layer_axes(ax, subset, accuracy_axis(results.evaluation))
    return _finish_panels(fig, axes, f"{results.experiment} on {results.model.name}: probe accuracy per layer")


def _subset_panels(subsets: list[str]):
    """One panel per subset, sharing the y axis; split_by panels wrap after three, so each stays readable."""
    cols = min(len(subsets), 3)
    n_rows = -(-len(subsets) // cols)
    fig, axes = _pyplot().subplots(n_rows, cols, figsize=(5.2 * cols, 4.0 * n_rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(subsets):]:
        ax.set_visible(False)
    return fig, axes


def _layer_axes(ax, subset: str, y_label: str) -> None:
    """A panel's title and axes: layers (whole numbers) along, a share from 0 to 1 up."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(f"{subset} rows", fontsize=11)
    ax.set_xlabel(LAYER_AXIS)
    ax.set_ylabel(y_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)


def _finish_panels(fig, axes, title: str):
    """The first panel's legend below the figure, and the title."""
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper center", ncol=min(len(names), 4), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _plot_series(ax, position: str, rows: list[LayerResult]) -> None:
    layers = [r.layer for r in rows]
    acc = np.array([r.accuracy for r in rows])
    (line,) = ax.plot(layers, acc, marker="o", label=f"probe at {position_words(position)}")
    if all(r.accuracy_ci for r in rows):  # the 95 % interval; runs from before it: ± the fold std
        low, high = np.array([r.accuracy_ci for r in rows]).T
        ax.fill_between(layers, low, high, color=line.get_color(), alpha=0.2, label=f"95% interval ({position})")
    else:
        std = np.array([r.accuracy_std for r in rows])
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


def plot_recall(results: Results, output_dir: Path, formats=DEFAULT_FORMATS) -> Path:
    return _save(recall_figure(as_results(results)), output_dir / "recall.png", formats)


def recall_figure(results: Results):
    """Each sense's recall (out-of-fold) per layer, one panel per subset; line style per position."""
    grouped = results.series()
    subsets = list(dict.fromkeys(subset for _, subset in grouped))
    senses = list(dict.fromkeys(sense for rows in grouped.values() for r in rows for sense in r.per_sense_recall))
    colours = sense_colours(results.dataset.labels or senses)  # report.html's colours for the same senses
    styles = {position: style for position, style in zip(dict.fromkeys(p for p, _ in grouped), ("-", "--", ":", "-."))}
    fig, axes = _subset_panels(subsets)
    for ax, subset in zip(axes.flat, subsets):
        for (position, sub), rows in grouped.items():
            if sub != subset:
                continue
            for sense in senses:
                ax.plot([r.layer for r in rows], [r.per_sense_recall.get(sense, np.nan) for r in rows],
                        ls=styles[position], marker=".", color=colours[sense], label=f"{sense} ({position})")
        _layer_axes(ax, subset, "recall of each sense")
    return _finish_panels(fig, axes, f"{results.experiment} on {results.model.name}: recall per sense and layer")


def plot_pca(results: Results, output_dir: Path, store, labels, position: str = "target",
             formats=DEFAULT_FORMATS) -> Path:
    """2-D PCA of the target vectors at the first, a middle and the best layer, coloured by sense."""
    from probe.report.extras import pca2_without_outliers

    results = as_results(results)
    plt = _pyplot()
    layers = sorted({r.layer for r in results.rows})
    best = results.best_rows().get((position, "all"))
    shown = list(dict.fromkeys([layers[0], layers[len(layers) // 2], best.layer if best else layers[-1]]))
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.8 * len(shown), 4.4), squeeze=False)
    for ax, layer in zip(axes[0], shown):
        points, explained, left_out = pca2_without_outliers(store.layer(position, layer))
        for sense, colour in sense_colours(labels.tolist()).items():  # the colours report.html gives them
            chosen = labels.astype(str) == sense
            ax.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7, label=sense, color=colour)
        ax.set_title(f"layer {layer}" + (" (embeddings)" if layer == 0 else ""))
        if len(left_out):  # massive-activation outliers, left out of the fit: say so on the plot
            ax.text(0.01, 0.01, f"{len(left_out)} outlier row(s) left out: "
                    f"{', '.join(str(i + 1) for i in left_out[:5])}{' …' if len(left_out) > 5 else ''}",
                    transform=ax.transAxes, fontsize=7, color="#8a4b0f", va="bottom")
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


def recall_matrix(confusion) -> np.ndarray:
    """Each true sense's row divided by its row count: the diagonal is that sense's recall. A sense with no
    rows keeps a row of zeros (nothing to divide)."""
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def plot_confusion(results: Results, output_dir: Path, position: str = "target", formats=DEFAULT_FORMATS) -> Path:
    return _save(confusion_figure(as_results(results), position), output_dir / "confusion.png", formats)


def confusion_figure(results: Results, position: str = "target"):
    """The confusion matrix at the best layer of the ``position`` series, one panel per subset: colour is
    the share of each true sense's rows (recall, white 0 to dark 1, a colour bar beside), and each cell
    is annotated with its count of rows."""
    from matplotlib.colors import LinearSegmentedColormap

    from probe.report.legend import CONFUSION_SCALE

    best = results.best_rows().get((position, "all")) or next(iter(results.best_rows().values()))
    panels = [r for r in results.rows if r.position == best.position and r.layer == best.layer]
    cmap = LinearSegmentedColormap.from_list("recall", list(CONFUSION_SCALE))
    plt = _pyplot()
    size = 1.6 + 0.6 * len(best.labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels) + 1.2, size + 0.6), squeeze=False,
                             layout="constrained")
    for ax, row in zip(axes[0], panels):
        counts, recall = np.asarray(row.confusion), recall_matrix(row.confusion)
        image = ax.imshow(recall, cmap=cmap, vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if recall[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(row.labels)), row.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(row.labels)), row.labels, fontsize=8)
        ax.set_xlabel("predicted sense")
        ax.set_title(f"{row.subset} rows: accuracy {row.accuracy:.3f}", fontsize=9)
    axes[0][0].set_ylabel("true sense")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of the true sense's rows (recall)")
    fig.suptitle(f"{results.experiment} on {results.model.name}: confusion at layer {best.layer}, "
                 f"{best.position} token (numbers: rows)", fontsize=10)
    return fig


def plot_runs(runs: list[Results], output: Path, subsets: list[str] | None = None) -> Path:
    """Several runs side by side (one panel per run, titled by its experiment and model): accuracy per
    layer for every (position, subset) series, the majority baseline as a grey line. Layers are shown as a
    fraction of depth so that models of different depths line up. Each panel has its own legend: runs of
    different experiments have different subsets."""
    from matplotlib.ticker import PercentFormatter

    runs = [as_results(run) for run in runs]
    names = run_names([(r.experiment, r.model.name, r.run_dir.name if r.run_dir else None) for r in runs])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.6), squeeze=False, sharey=True)
    styles = {"target": "-", "last": "--"}
    for ax, results, name in zip(axes[0], runs, names):
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
        ax.set_title(f"{name}\n({results.model.layers} blocks)", fontsize=10)
        ax.set_xlabel("depth (layer / number of blocks)")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: off the lines
    axes[0][0].set_ylabel("cross-validated accuracy")
    fig.suptitle(comparison_title([r.experiment for r in runs]))
    fig.tight_layout()
    return _save(fig, Path(output))
