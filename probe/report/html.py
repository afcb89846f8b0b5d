"""report.html: one self-contained, offline page per run (or one page comparing several runs).

The page inlines plotly.js once and reads everything from the run folder: results.json for accuracy and
confusion matrices, report_data.json (written by the ``html`` reporter) for the PCA and attention views.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from probe.errors import UserError
from probe.pipeline.evaluation import sentence as evaluation_sentence
from probe.report.attention_view import json_for_script, static_text
from probe.report import regression
from probe.report.figures import accuracy_figure, comparison_figure, recall_figure
from probe.report.legend import CONFUSION_SCALE, comparison_title, run_names, sense_colours
from probe.store.files import write_text_atomic

PAGE = "report.html"
DATA_FILE = "report_data.json"  # what the html reporter computes while the run has its vectors (extras.py)
# A reporter's own figures for the page: [{"file", "title", "hint"}], listed by add_report_figure.
FIGURES = "report_figures.json"
# A reporter's own tables for the page (CSV files of the run's folder), listed by add_report_table.
TABLES = "report_tables.json"


class ReportError(UserError, ValueError):
    """A run folder that can't be reported on; the message names the file."""


@dataclass
class Run:
    """One run as the report sees it: results.json's dict and, when written, report_data.json's."""

    results: dict
    data: dict | None = None
    folder: Path | None = None


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such run folder")
    results = _read_json(folder / "results.json", required=True)
    return Run(results, _read_json(folder / DATA_FILE, required=False), folder)


def _read_json(path: Path, required: bool) -> dict | None:
    if not path.exists():
        if required:
            raise ReportError(f"{path}: not found (is {path.parent} the output folder of `probe run`?)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error})") from None


def as_run(source) -> Run:
    """A run folder, a ``Run``, a results dict, or any object with a ``run_dir``/``output_dir`` folder."""
    if isinstance(source, Run):
        return source
    if isinstance(source, (str, Path)):
        return load_run(source)
    if isinstance(source, Mapping):
        return Run(dict(source))
    for attribute in ("run_dir", "output_dir"):
        if getattr(source, attribute, None) is not None:
            return load_run(getattr(source, attribute))
    raise TypeError(f"cannot make a report from {type(source).__name__}; give a run folder or a results dict")


def render_report(*sources, fragment: bool = False) -> str:
    """The report page for one run, or one page comparing several (each source as in ``as_run``).

    ``fragment``: an HTML fragment instead of a whole document, for a notebook's ``_repr_html_`` (several
    can share a page)."""
    if not sources:
        raise ValueError("render_report needs at least one run")
    runs = [as_run(source) for source in sources]
    tasks = {run.results.get("task", "classification") for run in runs}
    if len(tasks) > 1:
        raise ReportError("a page compares runs by one score, and these mix classification (accuracy) and "
                          "regression (R²) runs; make a page for each kind")
    names = _run_names(runs)
    data = {"runs": [_run_payload(run, name) for run, name in zip(runs, names)],
            "comparison": None if len(runs) == 1 else comparison_figure([run.results for run in runs], _folders(runs)),
            "confusion_scale": [list(stop) for stop in CONFUSION_SCALE]}
    sections = "".join(_run_section(n, run, name) for n, (run, name) in enumerate(zip(runs, names)))
    comparison = _view("comparison", "Runs compared", "", '<div class="plot"></div>') if len(runs) > 1 else ""
    report = _report_div(_title(runs), comparison + sections, data)
    return _assets() + report if fragment else _page(_title(runs), report)


def write_report(run_dir: str | Path, output: str | Path | None = None, *more_runs) -> Path:
    """Render and write the page (default ``RUN_DIR/report.html``) atomically; returns its path."""
    output = Path(output) if output else Path(run_dir) / PAGE
    return write_text_atomic(output, render_report(run_dir, *more_runs))


def _title(runs: list[Run]) -> str:
    if len(runs) == 1:
        return _run_names(runs)[0]
    return comparison_title([run.results["experiment"] for run in runs])


def _folders(runs: list[Run]) -> list[str | None]:
    return [run.folder.name if run.folder else None for run in runs]


def _run_names(runs: list[Run]) -> list[str]:
    """Each run's own name (experiment on model), told apart by its folder where two share one."""
    return run_names([(run.results["experiment"], run.results["model"]["name"], folder)
                      for run, folder in zip(runs, _folders(runs))])


def _run_payload(run: Run, name: str) -> dict:
    """What static/report.js needs for one run; the layer rows are cut down to the fields it draws. The
    senses' colours come from Python, so that the page and the PNGs give a sense the same one."""
    results, data = run.results, run.data or {}
    if results.get("task") == "regression":  # scores per layer only: no senses, recall or confusion
        return {"name": name, "sense_colours": {}, "blocks": results["model"]["layers"], "layers": [],
                "accuracy": regression.curves_plotly(results), "recall": None}
    keep = ("layer", "position", "subset", "accuracy", "labels", "confusion")
    return {
        "name": name,
        "sense_colours": sense_colours(results["dataset"]["labels"]),
        "blocks": results["model"]["layers"],
        "layers": [{k: row[k] for k in keep if k in row} for row in results["layers"]],
        "accuracy": accuracy_figure(results),
        "recall": recall_figure(results),
        "rows": data.get("rows"),
        "pca": data.get("pca"),
        "attention": data.get("attention"),
    }


def _run_section(n: int, run: Run, name: str) -> str:
    r = run.results
    if r.get("task") == "regression":
        return _regression_section(n, run, name)
    missing = "" if run.data else (
        f'<p class="hint">No {DATA_FILE} in this run (it is written by the <code>html</code> reporter), '
        "so there is no PCA or attention view.</p>")
    views = [
        _view("accuracy", "Accuracy per layer",
              ("Error bars: the 95% interval (how: results.json's statistics.interval); runs from before "
               "intervals: ± one standard deviation over folds. Hover for each fold's score and every control."),
              '<div class="plot"></div>'),
        _view("recall", "Recall per sense and layer",
              "Out-of-fold predictions pooled over folds: the share of each sense's rows predicted as it.",
              '<div class="plot"></div>'),
        _view("confusion", "Confusion matrix per layer",
              "Out-of-fold predictions pooled over folds; rows are the true sense. Colour: the share of the "
              "true sense's rows predicted as each sense (recall on the diagonal); numbers: rows.", ""),
    ]
    if run.data:
        views.insert(1, _view("pca", "Target vectors per layer (PCA)",
                              "Each layer's own first two principal components, coloured by sense; "
                              "hover a point for its sentence.", ""))
        views.append(_view("attention", "Attention",
                           "Blocks are numbered from 0; block i reads layer i and writes layer i + 1.",
                           '<div class="probe-attention"></div>'))
    views += _reporter_figures(run.folder) + _reporter_tables(run.folder)
    return (f'<section class="run" data-run="{n}"><h2>{html.escape(name)}</h2>'
            f'<p class="meta">{html.escape(_meta(r))}</p>{_interventions(r)}{_diagnostics_box(r)}{missing}'
            f'{"".join(views)}</section>')


def _regression_section(n: int, run: Run, name: str) -> str:
    """A regression run's section: R² and Spearman per layer (plotly) and the reporters' figures (the
    scatter of predicted vs true numbers, when the plots reporter ran first)."""
    r = run.results
    views = [_view("accuracy", "R² and Spearman per layer",
                   ("Error bars: the 95% interval (how: results.json's statistics.interval). Dotted: shuffled numbers; "
                    "dashed: random weights."),
                   '<div class="plot"></div>'), *_reporter_figures(run.folder)]
    return (f'<section class="run" data-run="{n}"><h2>{html.escape(name)}</h2>'
            f'<p class="meta">{html.escape(_meta(r))}</p>{_interventions(r)}{_diagnostics_box(r)}'
            f'{"".join(views)}</section>')


def _diagnostics_box(results: dict) -> str:
    """The run's diagnostics (results.json's ``diagnostics``): what makes a number below easy to misread."""
    found = results.get("diagnostics") or []
    if not found:
        return ""
    items = "".join(
        f'<li><b>{html.escape(d["code"])}</b>: {html.escape(d["message"])}'
        + (f'<br><span class="advice">What to do: {html.escape(d["advice"])}</span>' if d.get("advice") else "")
        + "</li>" for d in found)
    return (f'<div class="diagnostics" role="note"><h3>Read with care: {len(found)} warning(s)</h3>'
            f"<ul>{items}</ul></div>")


def _interventions(results: dict) -> str:
    """A warning line when the run changed the model's activations (results.json's ``interventions``)."""
    entries = results.get("interventions") or []
    if not entries:
        return ""
    said = "; ".join(f"{e['kind']} by plugin {e['plugin']} at {', '.join(e.get('hook_points') or ['unknown points'])}"
                     for e in entries)
    return f'<p class="hint intervened"><strong>Intervened on:</strong> {html.escape(said)}.</p>'


def add_report_figure(output_dir: str | Path, file: str, title: str, hint: str = "") -> Path:
    """List a reporter's PNG (``file``, in ``output_dir``) for report.html, which inlines it as a view of its
    own: a reporter that runs before ``html`` (or before ``probe report``) gets its figure on the page."""
    return _list_for_page(Path(output_dir) / FIGURES, "figure", file, title, hint)


def _reporter_figures(folder: Path | None) -> list[str]:
    """The views of the figures reporters listed in the run folder (a missing PNG is left out)."""
    import base64

    views = []
    for figure, image in _listed_files(folder, FIGURES):
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        body = (f'<img class="reporter-figure" style="max-width:100%" alt="{html.escape(figure["title"])}" '
                f'src="data:image/png;base64,{encoded}">')
        views.append(_view("figure", figure["title"], figure.get("hint", ""), body))
    return views


def _listed_files(folder: Path | None, listing: str) -> list[tuple[dict, Path]]:
    """Each entry of the run folder's ``listing`` (figures or tables) with its file, for the files that are
    there; an entry naming anything but a file of this run's folder is left out."""
    if folder is None:
        return []
    entries = _read_json(folder / listing, required=False) or []
    return [(entry, folder / entry["file"]) for entry in entries
            if Path(entry["file"]).name == entry["file"] and (folder / entry["file"]).is_file()]


def add_report_table(output_dir: str | Path, file: str, title: str, hint: str = "") -> Path:
    """List a reporter's CSV table (``file``, in ``output_dir``) for report.html, which shows it as a view of
    its own; like add_report_figure, for a reporter that runs before ``html``."""
    return _list_for_page(Path(output_dir) / TABLES, "table", file, title, hint)


def _list_for_page(listing: Path, kind: str, file: str, title: str, hint: str) -> Path:
    """Add (or replace) ``file``'s entry in the run folder's ``listing`` of a reporter's figures or tables."""
    if Path(file).name != file or file in ("", ".", ".."):
        raise ValueError(f"a report {kind} is a file in the run's folder, not a path: {file!r}")
    listed = [entry for entry in (_read_json(listing, required=False) or []) if entry["file"] != file]
    listed.append({"file": file, "title": title, "hint": hint})
    return write_text_atomic(listing, json.dumps(listed, indent=2) + "\n")


def _reporter_tables(folder: Path | None) -> list[str]:
    """The views of the CSV tables reporters listed in the run folder (a missing file is left out)."""
    import csv

    views = []
    for table, source in _listed_files(folder, TABLES):
        header, *rows = list(csv.reader(source.read_text(encoding="utf-8").splitlines()))
        cells = "".join(f"<tr>{''.join(f'<td>{html.escape(_cell(v))}</td>' for v in row)}</tr>" for row in rows)
        head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
        body = f'<table class="reporter-table"><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>'
        views.append(_view("table", table["title"], table.get("hint", ""), body))
    return views


def _cell(value: str) -> str:
    """A CSV cell as the page shows it: numbers to three decimals."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3f}"


def _meta(results: dict) -> str:
    s, d = results["settings"], results["dataset"]
    labels = "numeric labels" if results.get("task") == "regression" else f"labels {', '.join(d['labels'])}"
    return (f"{results['model']['layers']} blocks · dataset {d['name']} ({d['rows']} rows; {labels}"
            f") · positions {', '.join(s['positions'])} · "
            f"{evaluation_sentence(results.get('evaluation'), s)} · attention: {s['attention']}" + (f" · split by {s['split_by']}" if s.get("split_by") else ""))


def _view(name: str, title: str, hint: str, body: str) -> str:
    hint_html = f'<p class="hint">{html.escape(hint)}</p>' if hint else ""
    return f'<div class="view" data-view="{name}"><h3>{html.escape(title)}</h3>{hint_html}{body}</div>'


def _assets() -> str:
    """The page's CSS and JavaScript, plotly.js included: everything inline, nothing fetched."""
    from plotly.offline import get_plotlyjs

    return (f"<style>{static_text('report.css')}</style><script>{get_plotlyjs()}</script>"
            f"<script>{static_text('attention.js')}</script><script>{static_text('report.js')}</script>")


def _report_div(title: str, body: str, data: dict) -> str:
    """The report itself, drawn into its own element (so that several can share a notebook)."""
    element = f"probe-report-{uuid.uuid4().hex[:12]}"
    return (
        f'<div class="probe-report" id="{element}"><h1>{html.escape(title)}</h1>'
        '<p class="meta">Made by probe. Layer N is hidden state N (0 = the embeddings); block i is the '
        "i-th transformer block, which writes layer i + 1.</p>"
        f'{body}<script type="application/json" data-probe-data>{json_for_script(data)}</script></div>\n'
        f"<script>probeReport(document.getElementById({json.dumps(element)}));</script>\n"
    )


def _page(title: str, report: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>{_assets()}</head>\n<body>{report}</body></html>\n"
    )
