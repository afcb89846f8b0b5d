"""Built-in reporters: results.json, results.csv, plots (accuracy, PCA, attention) and summary.md."""

from __future__ import annotations

from probe.hookspecs import hookimpl


def plots(results, output_dir, context):
    from probe import report

    report.plot_accuracy(results, output_dir)
    store = context.stores[next(iter(context.stores))]
    report.plot_pca(results, output_dir, store, context.rows["label"], position=context.config.positions[0])
    attention_plot(results, output_dir, context)


def attention_plot(results, output_dir, context, n_layers_shown: int = 4):
    """The example sentence's target token: which words each head attends to, at a few layers."""
    import torch

    from probe import report
    from probe.data import span_token_indices
    from probe.hooks import capture

    results = report.as_results(results)
    row = context.rows[min(context.config.example, len(context.rows) - 1)]
    model, tokenizer = context.load_model()  # the run's model, probe's attention swapped in
    encoding = tokenizer(row["text"], return_tensors="pt", return_offsets_mapping=True)
    offsets = encoding.pop("offset_mapping")[0].tolist()
    target = span_token_indices(row["text"], offsets, row["span_start"], row["span_end"])[-1]
    n_blocks = results.model.layers
    shown = sorted({0, n_blocks // 3, 2 * n_blocks // 3, n_blocks - 1})[:n_layers_shown]
    with capture(model, [f"blocks.{i}.attn.pattern" for i in shown]) as seen, torch.no_grad():
        model(**encoding)
    patterns = {i: seen[f"blocks.{i}.attn.pattern"][0, :, target].float().numpy() for i in shown}
    tokens = [tokenizer.decode([t]).strip() or "␣" for t in encoding["input_ids"][0]]
    title = f"{results.experiment}: attention from {row['target']!r} ({row['label']}) — {row['text']}"
    return report.plot_attention(tokens, target, patterns, title, output_dir)


def _report(name: str):
    """A reporter that calls ``probe.report.<name>(results, output_dir)``, importing it only when used."""

    def write(results, output_dir, context):
        from probe import report

        return getattr(report, name)(results, output_dir)

    return write


@hookimpl
def register_reporters(register):
    register("json", _report("write_json"))
    register("csv", _report("write_csv"))
    register("plots", plots)
    register("summary", _report("write_summary"))
