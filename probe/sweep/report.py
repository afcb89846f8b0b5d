"""A sweep's reports: one tidy table over every cell, its best-layer summary, one plot and one HTML page.

- ``layers.csv`` / ``layers.json``: one row per cell × position × subset × layer (a run's results.csv rows,
  with the cell's experiment, model and seed in front).
- ``best.csv`` / ``best.json``: one row per cell × position × subset, at its best layer.
- ``best-layers.png`` (.svg, .pdf): best-layer accuracy per experiment (word) and model.
- ``sweep.html``: the plot and the best-layer table, linking each cell's own report.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from probe.store.files import write_text_atomic
from probe.sweep.plan import Cell

CELL_COLUMNS = ("experiment", "model", "seed")
BEST_COLUMNS = (*CELL_COLUMNS, "position", "subset", "best_layer", "blocks", "accuracy", "accuracy_std",
                "macro_f1", "selectivity", "majority_accuracy", "run_dir")


def layer_table(cells: list[Cell]):
    """Every finished cell's layer rows, the cell's columns first; cells without results are left out."""
    import pandas as pd

    from probe.pipeline.results import load_results

    frames = []
    for cell in cells:
        try:
            results = load_results(cell.run_dir)
        except (OSError, ValueError):
            continue
        table = results.layers
        for n, (column, value) in enumerate(zip(CELL_COLUMNS, (cell.experiment, cell.model, cell.seed))):
            table.insert(n, column, value)
        table["blocks"] = results.model.layers
        table["majority_accuracy"] = [_majority(results, subset) for subset in table["subset"]]
        table["run_dir"] = str(cell.run_dir)
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*CELL_COLUMNS, "layer"])


def _majority(results, subset: str) -> float:
    baseline = results.baseline("majority", subset)
    return baseline.accuracy if baseline else float("nan")


def best_table(layers):
    """One row per cell × position × subset: the layer with the highest accuracy (the first on a tie)."""
    if layers.empty:
        return layers.reindex(columns=BEST_COLUMNS)
    keys = [*CELL_COLUMNS, "position", "subset"]
    best = layers.loc[layers.groupby(keys, sort=False)["accuracy"].idxmax()].rename(columns={"layer": "best_layer"})
    return best.reindex(columns=BEST_COLUMNS).reset_index(drop=True)


def write_tables(layers, best, output_dir: Path) -> list[Path]:
    written = []
    for name, table in (("layers", layers), ("best", best)):
        written.append(write_text_atomic(output_dir / f"{name}.csv", table.to_csv(index=False)))
        written.append(write_text_atomic(output_dir / f"{name}.json", table.to_json(orient="records", indent=2)))
    return written


# ---------------------------------------------------------------- plot


def headline(best):
    """The bar each (experiment, model) gets: its first position's 'all' rows, mean over seeds."""
    rows = best[best.subset == "all"]
    first = rows.groupby(["experiment", "model"], sort=False)["position"].transform("first")
    rows = rows[rows.position == first]
    return rows.groupby(["experiment", "model"], sort=False).agg(
        position=("position", "first"), accuracy=("accuracy", "mean"), seed_std=("accuracy", "std"),
        fold_std=("accuracy_std", "mean"), best_layer=("best_layer", "median"), seeds=("seed", "count"),
        majority=("majority_accuracy", "mean"),
    ).reset_index()


def plot_best_layers(best, output: Path, title: str) -> Path:
    """Grouped bars: best-layer accuracy per experiment (x) and model (colour), the best layer printed on
    each bar and the majority-class baseline as a black tick. Error bars: the std over seeds when there are
    several, else the fold std at the best layer."""
    from probe.report.writers import _pyplot, _save

    bars = headline(best)
    experiments = list(dict.fromkeys(bars.experiment))
    models = list(dict.fromkeys(bars.model))
    width = 0.8 / max(len(models), 1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(experiments) * max(len(models), 1) ** 0.5), 4.2))
    for m, model in enumerate(models):
        mine = bars[bars.model == model].set_index("experiment").reindex(experiments)
        x = np.arange(len(experiments)) + (m - (len(models) - 1) / 2) * width
        error = np.where(mine.seeds > 1, mine.seed_std, mine.fold_std)
        drawn = ax.bar(x, mine.accuracy, width * 0.95, yerr=error, capsize=3, label=model)
        for bar, layer, value in zip(drawn, mine.best_layer, mine.accuracy):
            if not np.isnan(value):
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"L{layer:g}", ha="center", fontsize=7,
                        color="white")
        ax.hlines(mine.majority, x - width / 2, x + width / 2, color="black", lw=1.5,
                  label="majority class" if m == 0 else None)
    ax.set_xticks(np.arange(len(experiments)), experiments)
    ax.set_xlabel("experiment (word); bars: probe at its first position, all rows")
    ax.set_ylabel("best-layer accuracy (cross-validated)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, output)


# ---------------------------------------------------------------- page


def write_page(best, plot: Path, output_dir: Path, title: str) -> Path:
    """sweep.html: the plot (inlined) and the best-layer table, each cell linked to its own report."""
    image = base64.b64encode(plot.read_bytes()).decode()
    shown = [c for c in BEST_COLUMNS if c != "run_dir"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join(f"<tr>{''.join(_cell(row, c, output_dir) for c in shown)}</tr>" for _, row in best.iterrows())
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>"
        f'<img alt="best-layer accuracy per experiment and model" src="data:image/png;base64,{image}">'
        "<h2>Best layer per cell</h2><p>Layer N is hidden state N (0 = the embeddings). Each experiment "
        "links to the cell's run folder; its report.html when the run wrote one.</p>"
        f"<table><tr>{head}</tr>{body}</table></body></html>\n"
    )
    return write_text_atomic(output_dir / "sweep.html", page)


def _cell(row, column: str, output_dir: Path) -> str:
    value = row[column]
    if column == "experiment":
        folder = Path(row["run_dir"])
        target = folder / "report.html" if (folder / "report.html").exists() else folder
        return f'<td><a href="{html.escape(_relative(target, output_dir))}">{html.escape(str(value))}</a></td>'
    if isinstance(value, float):
        return f"<td>{'–' if np.isnan(value) else f'{value:.3f}'}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path, start.resolve())).as_posix()


def write_sweep_reports(cells: list[Cell], output_dir: Path, title: str) -> dict[str, Path]:
    """Every report of the sweep; returns the files written by kind (none when no cell has results)."""
    layers = layer_table(cells)
    if layers.empty:
        return {}
    best = best_table(layers)
    tables = write_tables(layers, best, output_dir)
    plot = plot_best_layers(best, output_dir / "best-layers.png", title)
    return {"layers": tables[0], "best": tables[2], "plot": plot, "page": write_page(best, plot, output_dir, title)}
