"""Built-in reporters: results.json, results.csv, plots (accuracy, PCA, attention), summary.md and report.html."""

from __future__ import annotations

from probe import report
from probe.hookspecs import hookimpl


def plots(results, output_dir, context):
    report.plot_accuracy(results, output_dir)
    store = context.stores[next(iter(context.stores))]
    report.plot_pca(results, output_dir, store, context.rows["label"], position=context.config.positions[0])
    attention_plot(results, output_dir, context)


def attention_plot(results, output_dir, context, n_blocks_shown: int = 4):
    """The example sentence's target token: which words each head attends to, in a few blocks."""
    import torch

    from probe.data import span_token_indices
    from probe.hooks import capture
    from probe.swap import is_swapped, swap_attention

    row = context.rows[min(context.config.example, len(context.rows) - 1)]
    model, tokenizer = context.load_model()
    if not is_swapped(model):
        swap_attention(model)
    encoding = tokenizer(row["text"], return_tensors="pt", return_offsets_mapping=True)
    offsets = encoding.pop("offset_mapping")[0].tolist()
    target = span_token_indices(row["text"], offsets, row["span_start"], row["span_end"])[-1]
    n_blocks = results["model"]["layers"]
    shown = sorted({0, n_blocks // 3, 2 * n_blocks // 3, n_blocks - 1})[:n_blocks_shown]
    with capture(model, [f"blocks.{i}.attn.pattern" for i in shown]) as seen, torch.no_grad():
        model(**encoding)
    patterns = {i: seen[f"blocks.{i}.attn.pattern"][0, :, target].float().numpy() for i in shown}
    tokens = [tokenizer.decode([t]).strip() or "␣" for t in encoding["input_ids"][0]]
    title = f"{results['experiment']}: attention from {row['target']!r} ({row['label']}) — {row['text']}"
    return report.plot_attention(tokens, target, patterns, title, output_dir)


def html_page(results, output_dir, context):
    """report.html, and report_data.json (the PCA and attention views) so that `probe report` can redraw it."""
    from probe.html_report import PAGE, Run, render_report
    from probe.io import write_text_atomic
    from probe.report_data import build_report_data, write_report_data

    config = context.config
    store = context.stores["reference" if config.attention == "reference" else "reimplemented"]
    data = build_report_data(results, context.rows, store.layer, config.positions, context.load_model,
                             split_by=config.split_by, example=config.example)
    write_report_data(data, output_dir)
    return write_text_atomic(output_dir / PAGE, render_report(Run(results, data, output_dir)))


@hookimpl
def register_reporters(register):
    register("json", lambda results, output_dir, context: report.write_json(results, output_dir))
    register("csv", lambda results, output_dir, context: report.write_csv(results, output_dir))
    register("plots", plots)
    register("summary", lambda results, output_dir, context: report.write_summary(results, output_dir))
    register("html", html_page)
