"""Built-in reporters: results.json, results.csv, plots (accuracy, PCA, attention), summary.md and report.html.

Each is ``fn(results, output_dir, run)``: the typed Results, the folder, and the run's RunData (services,
rows, splits, features); see docs/plugins.md."""

from __future__ import annotations

from probe.hookspecs import hookimpl


def plots(results, output_dir, run):
    from probe.report import writers as report
    from probe.store.caches import drawn_before, keep_drawn

    config, cache_dir = run.config, run.services.cache_dir
    formats = figure_formats(config)
    store = run.features.main  # probe's own vectors, as report.html shows
    key = _figures_key(results, run, store, formats)
    if results.task == "regression":
        return regression_plots(results, output_dir, run, formats, key)
    if drawn_before(cache_dir, key, output_dir):
        return
    drawn = [report.plot_accuracy(results, output_dir, formats), report.plot_recall(results, output_dir, formats),
             report.plot_pca(results, output_dir, store, run.rows.table["label"],
                             position=config.positions[0], formats=formats),
             report.plot_confusion(results, output_dir, position=config.positions[0], formats=formats),
             attention_plot(results, output_dir, run, formats=formats)]
    keep_drawn(cache_dir, key, [png.with_suffix(f".{fmt}") for png in drawn for fmt in ("png", *formats)])


def regression_plots(results, output_dir, run, formats, key):
    """The regression figures (R²/Spearman per layer, predicted vs true), listed for report.html too."""
    from probe.report import regression_figures as figures
    from probe.report.html import add_report_figure
    from probe.store.caches import drawn_before, keep_drawn

    cache_dir = run.services.cache_dir
    if not drawn_before(cache_dir, key, output_dir):
        drawn = figures.plot(results, output_dir, run.rows.table["label"], formats)
        keep_drawn(cache_dir, key, [png.with_suffix(f".{fmt}") for png in drawn for fmt in ("png", *formats)])
    add_report_figure(output_dir, figures.SCATTER_FILE, figures.SCATTER_TITLE, figures.SCATTER_HINT)


def _figures_key(results, run, store, formats) -> str:
    """Everything the three figures are drawn from: the results (less when and where they were made), the
    vectors (their cache folder is named by their content), the example row, the formats, the code."""
    from probe.pipeline.extract import cache_key
    from probe.pipeline.results import without_provenance
    from probe.pipeline.run import feature_key
    from probe.store.caches import drawing_code

    row = example_row(run)
    return cache_key({"results": without_provenance(results.to_dict()), "vectors": store.folder.name,
                      "position": run.config.positions[0], "example": [row["text"], row["label"]],
                      "attention": feature_key(run.services, run.rows, [0], "reimplemented"),
                      "formats": list(formats), "code": drawing_code()})


def example_row(run) -> dict:
    """The row the config's ``example`` names (the last one when it names a row past the end)."""
    return run.rows.table[min(run.config.example, len(run.rows) - 1)]


def figure_formats(config) -> tuple[str, ...]:
    """``options: {plots: {formats: [png, svg, pdf]}}``; PNG alone by default."""
    from probe.pipeline.config import ConfigError
    from probe.report.writers import DEFAULT_FORMATS, FIGURE_FORMATS

    formats = (config.options.get("plots") or {}).get("formats", DEFAULT_FORMATS)
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ConfigError(f"{config.source or 'config'}: options.plots.formats: unknown format(s) "
                          f"{', '.join(map(repr, unknown))}; choose from {', '.join(FIGURE_FORMATS)}")
    return tuple(formats)


def attention_plot(results, output_dir, run, n_blocks_shown: int = 4, formats=("png",)):
    """The example sentence's target token: which words each head attends to, in a few blocks."""
    from probe.report import writers as report

    row = example_row(run)
    n_blocks = results.model.layers
    shown = sorted({0, n_blocks // 3, 2 * n_blocks // 3, n_blocks - 1})[:n_blocks_shown]
    tokens, target, patterns = example_patterns(run, row, shown)
    title = f"{results.experiment}: attention from {row['target']!r} ({row['label']}) — {row['text']}"
    return report.plot_attention(tokens, target, patterns, title, output_dir, formats)


def example_patterns(run, row, shown: list[int]):
    """(tokens, target index, {block: (heads, keys)}) for one row; cached under the key its activations
    have, so a rerun on a full cache loads no model."""
    import json

    import numpy as np

    from probe.pipeline.extract import cache_key
    from probe.pipeline.run import feature_key
    from probe.store.files import write_atomic
    from probe.store.usage import touch

    key = cache_key({"features": feature_key(run.services, run.rows, shown, "reimplemented"), "text": row["text"],
                     "span": [row["span_start"], row["span_end"]]})
    path = run.services.cache_dir / "attention" / f"{key}.npz"
    if path.exists():
        touch(path)  # last use, for `probe cache --prune`
        try:  # a damaged file (zip CRC) is computed again, not trusted
            with np.load(path) as saved:
                return json.loads(str(saved["tokens"])), int(saved["target"]), {b: saved[f"block{b}"] for b in shown}
        except Exception:
            path.unlink(missing_ok=True)
    tokens, target, patterns = _patterns(run.services, row, shown)

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.savez(handle, tokens=json.dumps(tokens), target=target, **{f"block{b}": p for b, p in patterns.items()})

    write_atomic(path, write)
    return tokens, target, patterns


def _patterns(services, row, shown):
    import torch

    from probe.core.hooks import capture
    from probe.pipeline.data import span_token_indices
    from probe.scale.devices import device_of

    model, tokenizer = services.load_model()  # the run's model, probe's attention swapped in
    encoding = tokenizer(row["text"], return_tensors="pt", return_offsets_mapping=True)
    offsets = encoding.pop("offset_mapping")[0].tolist()
    if row["span_start"] is None:  # a row without a target: the attention from the last token, as report.html shows
        target = len(offsets) - 1
    else:
        target = span_token_indices(row["text"], offsets, row["span_start"], row["span_end"])[-1]
    with capture(model, [f"blocks.{i}.attn.pattern" for i in shown]) as seen, torch.no_grad():
        model(**encoding.to(device_of(model)))
    patterns = {i: seen[f"blocks.{i}.attn.pattern"][0, :, target].float().cpu().numpy() for i in shown}
    tokens = [tokenizer.decode([t]).strip() or "␣" for t in encoding["input_ids"][0]]
    return tokens, target, patterns


def _report(name: str):
    """A reporter that calls ``probe.report.writers.<name>(results, output_dir)``, importing it only when used."""

    def write(results, output_dir, run):
        from probe.report import writers as report

        return getattr(report, name)(results, output_dir)

    return write


def summary(results, output_dir, run):
    """summary.md, with what the run's other reporters did (the pipeline runs it after them)."""
    from probe.report.writers import write_summary

    return write_summary(results, output_dir, run.reporters.outcomes)


def html_page(results, output_dir, run):
    """report.html, and report_data.json (the PCA and attention views) so that `probe report` can redraw it."""
    from probe.report.extras import build_report_data, write_report_data
    from probe.report.html import PAGE, Run, render_report
    from probe.store.files import write_text_atomic

    config = run.config
    if results.task == "regression":  # no PCA by sense or attention viewer: the page shows the scores' figures
        _scatter_for_page(results, output_dir, run)
        return write_text_atomic(output_dir / PAGE, render_report(Run(results.to_dict(), None, output_dir)))
    data = build_report_data(results, run.rows.table, run.features.main.layer, config.positions,
                             run.services.load_model, split_by=config.split_by, example=config.example,
                             attention_cache=_attention_cache(run))
    write_report_data(data, output_dir)
    # report.html's page reads the results as results.json writes them
    return write_text_atomic(output_dir / PAGE, render_report(Run(results.to_dict(), data, output_dir)))


def _scatter_for_page(results, output_dir, run):
    """The predicted-vs-true scatter report.html shows: drawn here when the plots reporter has not."""
    from probe.report import regression_figures as figures
    from probe.report.html import add_report_figure
    from probe.report.writers import _save

    if not (output_dir / figures.SCATTER_FILE).is_file():
        _save(figures.scatter_figure(results, run.rows.table["label"]), output_dir / figures.SCATTER_FILE)
    add_report_figure(output_dir, figures.SCATTER_FILE, figures.SCATTER_TITLE, figures.SCATTER_HINT)


def study(results, output_dir, run):
    """study.csv and study.md: per subset of split_by (a benchmark's words), the layer chosen without peeking,
    the probe's accuracy there beside the sense-centroid baseline, and the macro average; listed for
    report.html, which shows the table when ``html`` comes after ``study`` in the reporters."""
    from probe.report.html import add_report_table
    from probe.report.study import STUDY_FILES, make_study, write_study

    write_study(make_study(results, run), output_dir)
    add_report_table(output_dir, STUDY_FILES[0], "Study: best layer per subset",
                     "Per subset: the layer chosen on inner folds of its training rows, the probe's accuracy "
                     "there and the sense-centroid 1-NN baseline on the same vectors, with 95% intervals; "
                     "the last row averages the subsets (study.md has the same table).")


def few_shot(results, output_dir, run):
    """few_shot.csv, few_shot.md and few_shot.png: accuracy against examples per sense over CoarseWSD-20's
    n-shot samples (dataset coarsewsd-nshot, split_by: sample), the probe beside the sense-centroid baseline
    at one layer (``options: {few_shot: {layer: N}}``; the deepest probed by default)."""
    from probe.pipeline.config import ConfigError, plugin_options
    from probe.plugins import ReporterSkipped
    from probe.report.fewshot import FEW_SHOT_FILES, make_few_shot, write_few_shot
    from probe.report.html import add_report_figure, add_report_table

    config = run.config
    layer = plugin_options(config, "few_shot", ("layer",)).get("layer")
    if layer is not None and layer not in run.layers:
        raise ConfigError(f"{config.source or 'config'}: options.few_shot.layer is {layer!r}, which the run did "
                          f"not probe; its layers: {', '.join(map(str, run.layers))}")
    missing = [c for c in ("word", "shots", "draw") if c not in run.rows.table.column_names]
    if missing or config.split_by is None:
        raise ReporterSkipped("few-shot curves need rows with word, shots and draw columns (dataset "
                              "coarsewsd-nshot) and one subset per sample (split_by: sample)")
    write_few_shot(make_few_shot(results, run, layer), output_dir)
    add_report_table(output_dir, FEW_SHOT_FILES[0], "Few-shot curves",
                     "Accuracy against training examples per sense: the macro average over words (mean over "
                     "draws, 95% Student-t interval across draws), then each word's curve.")
    add_report_figure(output_dir, FEW_SHOT_FILES[2], "Few-shot curve", "")


def _attention_cache(run):
    """Where the viewer's patterns are kept: under the key of the activations they come from, plus what
    picks and names the rows shown (the labels and the split_by column: the activations' key covers only
    the texts), so that a rerun on a full cache loads no model for report.html either."""
    from probe.pipeline.extract import cache_key
    from probe.pipeline.run import feature_key

    config, table = run.config, run.rows.table
    shown = {"label": list(table["label"]),
             "subsets": [str(v) for v in table[config.split_by]] if config.split_by else None}
    key = cache_key({"features": feature_key(run.services, run.rows, "all", "reimplemented"), "viewer": "report.html",
                     "split_by": config.split_by, "example": config.example, "rows": cache_key(shown)})
    return run.services.cache_dir / "attention" / f"{key}.json"


@hookimpl
def register_reporters(register):
    register("json", _report("write_json"))
    register("csv", _report("write_csv"))
    register("plots", plots)
    register("summary", summary)
    register("html", html_page)
    register("study", study)
    register("few-shot", few_shot)
