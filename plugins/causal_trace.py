"""Causal tracing of the sense: which heads, blocks and positions carry the context into the word?

Reporter ``trace``. For pairs of rows with the same target word and different senses (same template
``group`` first), run the base row while patching in, from the source row, one component at a time —
each head's ``z``, each block's attention output and MLP output, the residual stream at each layer and
position (aligned on the target word; see probe/pipeline/patching.py) — and score how far the patch
moves the probe at the probed layer toward the source's sense: the probe's log-probability of the
source's sense minus the base's, at the target, as a share of what patching the whole residual stream
at the target at the probed layer moves it (1) against no patch (0). Averaged over pairs as a ratio of
means, with a 95% bootstrap interval over pairs (seeded).

The probe is the run's own (its name and options), fitted on every row's vectors at the probed layer.

Options under ``options.trace``: ``pairs`` (at most this many pairs, default 64), ``layer`` (the probed
layer, default the run's best at the target), ``seed`` (pair sampling and bootstrap, default the
config's), ``batch`` (patched copies per forward, default 256), ``window`` (residual positions at most
this far from the target, default all), ``draws`` (bootstrap draws, default 1000). Writes trace.csv,
trace.json, trace_heads.png/.svg (blocks × heads, with the whole attention and MLP outputs) and
trace_positions.png/.svg (layers × positions), and adds both figures to report.html when ``trace``
runs before ``html``. For a decoder whose checkpoint has a causal LM head, trace.csv also has the
change in the model's own log-probability of the source's next token (see ``NEXT_TOKEN``).
"""

from __future__ import annotations

import csv
import io
import json
import time

from probe import hookimpl

OPTIONS = ("pairs", "layer", "seed", "batch", "window", "draws")
COLUMNS = ("block", "head", "position", "effect", "ci_low", "ci_high", "pairs")
NEXT_COLUMNS = ("next_token_change", "next_token_ci_low", "next_token_ci_high")  # decoders with an LM head


def trace_settings(results, config, n_blocks: int) -> dict:
    """The options with their defaults; a bad one is a ConfigError naming ``options.trace.<key>``."""
    from probe.pipeline.config import ConfigError, plugin_options

    options = plugin_options(config, "trace", OPTIONS)
    if "target" not in config.positions:
        raise ConfigError("the trace reporter reads the target: add target to the config's positions")
    rows = [r for r in results.rows if r.position == "target" and r.subset == "all" and r.layer >= 1]
    best = max(rows, key=lambda r: r.accuracy).layer if rows else n_blocks
    settings = {"pairs": options.get("pairs", 64), "layer": options.get("layer", best),
                "seed": options.get("seed", config.seed), "batch": options.get("batch", 256),
                "window": options.get("window"), "draws": options.get("draws", 1000)}
    limits = {"pairs": (1, None), "layer": (1, n_blocks), "seed": (0, None), "batch": (1, None),
              "window": (0, None), "draws": (10, None)}
    for key, (low, high) in limits.items():
        value = settings[key]
        if key == "window" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            allowed = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
            raise ConfigError(f"options.trace.{key} must be {allowed}, got {value!r}")
    return settings


def fitted_probe(run, layer: int):
    """The run's probe (its name and options) fitted on every row's target vectors at ``layer``."""
    import numpy as np

    from probe.pipeline.config import ConfigError

    probe = run.services.make_probe()()
    if not hasattr(probe, "predict_log_proba"):
        raise ConfigError(f"the trace reporter needs a probe with predict_log_proba; {run.config.probe_name!r} "
                          "has none (use logreg)")
    return probe.fit(run.features.main.layer("target", layer), np.asarray(run.rows.table["label"]))


def run_trace(run, settings: dict) -> dict:
    """Every pair traced; the per-component summary, the pairs, the trace points and the time taken."""
    from probe.core.hooks import hook_points
    from probe.pipeline.extract import attends_causally
    from probe.pipeline.patching import TracePoints, encode_sentence, sample_pairs, summarise, trace_pair
    from probe.pipeline.progress import progress_bar

    config, table = run.config, run.rows.table
    model, tokenizer = run.services.load_model()
    cut = attends_causally(model)  # the target's vector sees nothing after it: run only up to it
    sentences = [encode_sentence(tokenizer, text, span, cut) for text, span in zip(table["text"], run.rows.spans)]
    groups = table["group"] if "group" in table.column_names else None
    pairs = sample_pairs(table["target"], table["label"], groups, [len(s.targets) for s in sentences],
                         settings["pairs"], settings["seed"],
                         contexts=[tuple(s.encoding["input_ids"][0].tolist()) for s in sentences])
    if not pairs:
        from probe.pipeline.config import ConfigError

        raise ConfigError("the trace reporter found no pair of rows with the same target word and different labels")
    probe = fitted_probe(run, settings["layer"])
    names = hook_points(model)
    points = TracePoints(n_blocks=run.services.n_blocks, n_heads=run.services.model_config.num_attention_heads,
                         layer=settings["layer"], final_norm=config.final_norm,
                         has_mlp="blocks.0.mlp.out" in names)
    head, next_token = next_token_reader(run, model, tokenizer, cut) if cut else (None, "not available: an encoder")
    started = time.perf_counter()
    traces = []
    for pair in progress_bar(run.services.progress, iterable=pairs, desc=f"{config.name}: causal trace", unit="pair"):
        labels = (table["label"][pair.base], table["label"][pair.source])
        following = next_token(pair.source) if head is not None else None
        traces.append(trace_pair(model, probe, list(probe.classes_), sentences[pair.base], sentences[pair.source],
                                 labels, points, config.pooling, settings["batch"], settings["window"], head,
                                 following))
    rows = summarise(traces, settings["seed"], settings["draws"])
    return {"rows": rows, "pairs": [[p.base, p.source] for p in pairs],
            "next_token": NEXT_TOKEN if head is not None else next_token,
            "same_group": sum(groups is not None and groups[p.base] == groups[p.source] for p in pairs),
            "components": ["head", "attn"] + (["mlp"] if points.has_mlp else []) + ["resid"],
            "seconds": round(time.perf_counter() - started, 1)}


NEXT_TOKEN = ("next_token_change: the change in the base's log-probability (nats) of the token that follows the "
              "target in the source sentence, predicted at the target's last token; mean over pairs, not normalised")


def next_token_reader(run, model, tokenizer, cut: bool):
    """(the checkpoint's LM head, row → the id of the token after its target or None), or (None, why not).
    The head is checked once against the causal LM's own logits: a family whose logits are something else
    (soft-capped, scaled) gets no number rather than a wrong one."""
    import torch
    from transformers import AutoModelForCausalLM

    from probe.pipeline.extract import encode_rows
    architectures = getattr(run.services.model_config, "architectures", None) or []
    if not any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        named = ", ".join(architectures) or "no architecture"
        return None, f"not available: the checkpoint ({named}) has no causal LM head"
    language_model = run.services.load_weights(AutoModelForCausalLM).eval()
    head = language_model.get_output_embeddings()
    table, spans = run.rows.table, run.rows.spans
    encoding, targets, _ = encode_rows(tokenizer, [table["text"][0]], [spans[0]], cut=False)
    with torch.inference_mode():
        on_device = {k: v.to(head.weight.device) for k, v in encoding.items()}
        own = language_model(**on_device, use_cache=False).logits[0, -1].float()
        ours = head(model(**on_device, use_cache=False).last_hidden_state[0, -1]).float()
    if not torch.allclose(own, ours, atol=1e-3, rtol=1e-3):
        return None, "not available: this family's logits are not the LM head on the last hidden state"

    def following(row: int):
        encoding, targets, _ = encode_rows(tokenizer, [table["text"][row]], [spans[row]], cut=False)
        after = targets[0][-1] + 1
        return int(encoding["input_ids"][0, after]) if after < encoding["input_ids"].shape[1] else None

    return head, following


def causal_trace(results, output_dir, run):
    settings = trace_settings(results, run.config, run.services.n_blocks)
    traced = run_trace(run, settings)
    summary = {"settings": settings, "score": "share of the probe's log-probability difference (source sense "
               "minus base sense) at the target that the patch moves, whole residual at the target = 1",
               **traced}
    _write(summary, output_dir)
    _plot_heads(results, summary, output_dir)
    _plot_positions(results, summary, output_dir)
    return summary


def _write(summary: dict, output_dir):
    from probe.store.files import write_text_atomic

    write_text_atomic(output_dir / "trace.json", json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    decoder = "next_token_change" in summary["rows"][0]
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + (NEXT_COLUMNS if decoder else ()))
    writer.writeheader()
    writer.writerows(summary["rows"])
    write_text_atomic(output_dir / "trace.csv", buffer.getvalue())


def _heatmap(values, row_labels, column_labels, title, xlabel, ylabel, path, extent):
    import matplotlib

    from probe.report.writers import _pyplot, _save

    plt = _pyplot()
    colours = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#c8c8c8")  # grey: too few pairs, or none
    fig, ax = plt.subplots(figsize=(1.8 + 0.42 * len(column_labels), 1.4 + 0.38 * len(row_labels)))
    image = ax.imshow(values, cmap=colours, vmin=-extent, vmax=extent, aspect="auto")
    ax.set_xticks(range(len(column_labels)), [str(c) for c in column_labels], fontsize=7)
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize=7)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="effect (whole residual at target = 1)")
    return _save(fig, path, formats=("png", "svg"))


def _plot_heads(results, summary, output_dir):
    """Blocks × (heads, whole attention, whole MLP)."""
    import numpy as np

    rows = [r for r in summary["rows"] if r["head"] != "resid"]
    blocks = sorted({r["block"] for r in rows})
    columns = sorted({r["head"] for r in rows if isinstance(r["head"], int)}) + \
        [c for c in ("attn", "mlp") if any(r["head"] == c for r in rows)]
    values = np.full((len(blocks), len(columns)), np.nan)
    for r in rows:
        values[blocks.index(r["block"]), columns.index(r["head"])] = r["effect"]
    extent = max(float(np.nanmax(np.abs(values))), 0.05)
    path = _heatmap(values, blocks, columns, f"{results.experiment}: patching one head (or all of attention / MLP) "
                    f"from the other sense, layer {summary['settings']['layer']}, {len(summary['pairs'])} pairs",
                    "head", "block", output_dir / "trace_heads.png", extent)
    _add_to_report(output_dir, path, "Causal trace: heads",
                   "Share of the probe's move toward the source sense when one head's z (or the whole attention or "
                   "MLP output) of a block is copied from the other-sense sentence; trace.csv has the 95% intervals.")


def _plot_positions(results, summary, output_dir):
    """Layers × positions relative to the target, residual stream only."""
    import numpy as np

    # A position only some pairs have (far from the target in a long sentence) is grey below a quarter of them.
    fewest = max(2, len(summary["pairs"]) // 4)
    rows = [r for r in summary["rows"] if r["head"] == "resid" and r["pairs"] >= fewest]
    layers = sorted({r["block"] for r in rows})
    numbers = sorted({r["position"] for r in rows if r["position"] != "target"})
    columns = [p for p in numbers if p < 0] + ["target"] + [p for p in numbers if p > 0]
    values = np.full((len(layers), len(columns)), np.nan)
    for r in rows:
        values[layers.index(r["block"]), columns.index(r["position"])] = r["effect"]
    path = _heatmap(values, layers, columns, f"{results.experiment}: patching the residual stream at one layer and "
                    f"position, read at layer {summary['settings']['layer']} (grey: fewer than {fewest} pairs)",
                    "position relative to the target", "layer (residual stream entering block)",
                    output_dir / "trace_positions.png", 1.0)
    _add_to_report(output_dir, path, "Causal trace: residual stream by position",
                   "Row L, column p: the residual stream at layer L and position p (relative to the target word) "
                   "copied from the other-sense sentence. The target column's last row is 1 by construction; at that "
                   "layer no other position is read. trace.csv has every position with its 95% interval.")


def _add_to_report(output_dir, path, title, hint):
    from probe.report.html import add_report_figure

    add_report_figure(output_dir, path.name, title, hint)


@hookimpl
def register_reporters(register):
    register("trace", causal_trace)
