"""Head ablation: how much of the sense information does each attention head carry?

Knock out one head at a time — zero its output ``z`` (``mode: zero``) or replace it with its mean over
the dataset's tokens (``mode: mean``, which keeps the head's constant contribution and removes only
what depends on the input) — re-extract the target vectors, re-probe, and report the accuracy drop.
A head whose ablation costs accuracy was moving sense information into the target's vector.

Only what the ablation changes is recomputed: the residual stream entering block b is computed once
per block and the blocks from b up to the probed layer are rerun for every head at once, each batch
repeated once per head (and once unablated), each copy's hook ablating only its own head
(``probe.pipeline.partial.vectors_of_copies``); the probes for every head are fitted in parallel on the
run's folds. Each drop comes with its spread over folds and an exact McNemar test on the rows (unablated
vs ablated, same rows, same folds): a drop of a row or two is noise, and the heatmap marks only heads
whose drop survives a Bonferroni correction.

Two ways in, both through the attention core's hook points:

- reporter ``head-ablation``: the per-head sweep. Options under ``options.head_ablation``:
  ``mode`` (zero | mean, default zero), ``layers`` (blocks to sweep, default all before the probed
  layer), ``probe_layer`` (default: the best layer of the unablated run), ``position`` (default target),
  ``copies_per_forward`` (copies of a batch run in one forward, default 256 // batch_size; it changes
  the speed and memory, not the vectors).
  Writes head_ablation.json, head_ablation.csv and head_ablation.png (blocks × heads).
- ``activation_hooks``: ``options.ablate_heads: [[block, head], ...]`` zeroes those heads for the whole
  experiment, so every layer's probe runs on the ablated model.
"""

from __future__ import annotations

import csv
import io
import json

from probe import hookimpl


def ablate(heads: list[int], replacement=None):
    """A hook for ``blocks.{i}.attn.z`` (batch, head, pos, d_head): zero ``heads`` or set them to ``replacement``."""

    def hook(z, name: str):
        z = z.clone()
        for head in heads:
            z[:, head] = 0.0 if replacement is None else replacement[head].to(z.dtype)
        return z

    return hook


def mean_z(model, tokenizer, texts, spans, blocks: list[int], batch_size: int = 16) -> dict:
    """Each head's z averaged over every token of ``texts``: block → (heads, d_head). Rows are batched as
    extraction batches them (sorted by length, right-padded; padding is left out of the sums), and each
    row's sum is added in float64 in dataset order, so the mean depends on the batch size only as the z
    themselves do (the last bits)."""
    import numpy as np
    import torch

    from probe.core.hooks import capture
    from probe.pipeline.extract import extraction_batches, length_sorted
    from probe.scale.devices import device_of, on_device

    order, lengths = length_sorted(tokenizer, texts, spans, cut=False)
    per_row = {}
    tokenizer.padding_side = "right"
    for rows in extraction_batches(order, batch_size):
        encoding = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True)
        real = encoding["attention_mask"].double()[:, None, :, None]  # (rows, 1, pos, 1): 0 at padding
        with capture(model, [f"blocks.{b}.attn.z" for b in blocks]) as seen, torch.no_grad():
            model(**on_device(encoding, device_of(model)), use_cache=False)
        for b in blocks:
            # Summed on the CPU: blocks spread over devices (device_map) hold z where they run, and some
            # devices (Apple's MPS) have no float64.
            sums = (seen[f"blocks.{b}.attn.z"].cpu().double() * real).sum(2).numpy()  # (rows, heads, d_head)
            per_row.setdefault(b, np.zeros((len(texts), *sums.shape[1:])))[rows] = sums
    return {b: torch.from_numpy(sums.sum(0) / sum(lengths)).float().to(device_of(model)) for b, sums in per_row.items()}


def sweep_settings(results, config) -> dict:
    """mode, position, probe_layer and blocks from ``options.head_ablation``, with their defaults."""
    options = config.options.get("head_ablation", {})
    mode = options.get("mode", "zero")
    if mode not in ("zero", "mean"):
        raise ValueError(f"options.head_ablation.mode is {mode!r}; accepted values: zero, mean")
    position = options.get("position", config.positions[0])
    rows = [r for r in results.rows if r.position == position and r.subset == "all"]
    probe_layer = options.get("probe_layer", max(rows, key=lambda r: r.accuracy).layer)
    if probe_layer < 1:
        raise ValueError("options.head_ablation.probe_layer must be at least 1: layer 0 comes before any head")
    blocks = options.get("layers", list(range(probe_layer)))  # block b feeds layers b+1 and up
    # Copies of a batch per forward: about 256 rows each by default. The vectors do not depend on it.
    per_forward = options.get("copies_per_forward", max(1, 256 // config.batch_size))
    if isinstance(per_forward, bool) or not isinstance(per_forward, int) or per_forward < 1:
        raise ValueError(f"options.head_ablation.copies_per_forward is {per_forward!r}; it must be a whole number "
                         "of at least 1")
    return {"mode": mode, "position": position, "probe_layer": probe_layer, "blocks": blocks,
            "copies_per_forward": per_forward,
            "baseline_accuracy": next(r.accuracy for r in rows if r.layer == probe_layer)}


def ablated_vectors(run, settings: dict) -> tuple[dict, dict]:
    """Vectors at the probed layer: per block unablated ({block: X}) and per head ablated ({(block, head): X}),
    each rerun from the block's own input, every copy of a block in batched forwards; each cached on disk
    beside the run's features, and only the missing ones computed."""
    from probe.pipeline.progress import progress_bar
    from probe.store.caches import load_arrays, save_arrays

    n_heads = run.services.model_config.num_attention_heads
    loaded = {}
    unablated, ablated = {}, {}
    bar = progress_bar(run.services.progress, total=len(settings["blocks"]) * n_heads, unit="head",
                       desc=f"{run.config.name}: head ablation")
    with bar:
        for block in settings["blocks"]:
            heads = [None, *range(n_heads)]  # None: the block's unablated copy
            entries = {head: _cache_entry(run, settings, block, head) for head in heads}
            kept = {head: load_arrays(path, key, "cached ablation vectors", "computing them again")
                    for head, (path, key) in entries.items()}
            vectors = {head: arrays[0] for head, arrays in kept.items() if arrays}
            missing = [head for head in heads if head not in vectors]
            if missing:
                vectors |= dict(zip(missing, _rerun(run, settings, block, missing, loaded)))
                for head in missing:
                    save_arrays(*entries[head], [vectors[head]])
            unablated[block] = vectors[None]
            ablated |= {(block, head): vectors[head] for head in range(n_heads)}
            bar.update(n_heads)
    return unablated, ablated


def _rerun(run, settings: dict, block: int, heads: list, loaded: dict) -> list:
    """Each of ``heads``' vectors (None: unablated), blocks ``block``.. rerun from the block's captured input
    with every head's copy in the same forwards. The model (and in mean mode each head's mean z) is loaded
    on the first call only: a rerun on a full cache reads no weights."""
    from probe.pipeline.partial import Edit, capture_block_inputs, vectors_of_copies

    config = run.config
    texts, spans = run.rows.table["text"], run.rows.spans
    if not loaded:
        model, tokenizer = run.services.load_model()
        means = mean_z(model, tokenizer, texts, spans, settings["blocks"]) if settings["mode"] == "mean" else {}
        loaded.update(model=model, tokenizer=tokenizer, means=means)
    model, means = loaded["model"], loaded["means"].get(block)
    inputs = capture_block_inputs(model, loaded["tokenizer"], texts, spans, block, config.batch_size,
                                  whole_rows=settings["position"] == "last")
    name = f"blocks.{block}.attn.z"
    copies = [None if head is None else [Edit(name, head, 0.0 if means is None else means[head])] for head in heads]
    return vectors_of_copies(model, inputs, block, settings["probe_layer"], copies, settings["position"],
                             config.pooling, settings["copies_per_forward"])


def _cache_entry(run, settings, block, head) -> tuple:
    """Where one copy's vectors are stored, and the key of everything they depend on (the entry holds it)."""
    from probe.pipeline.extract import cache_key

    # The vectors of the attention the reruns use (under attention: both, not the first-extracted reference);
    # their folder's name is their feature key, which carries the pooling, batching and batch size they share.
    key = cache_key({"features": run.features.main.folder.name, "block": block, "head": head,
                     "mode": settings["mode"] if head is not None else None, "layer": settings["probe_layer"],
                     "position": settings["position"]})
    return run.services.cache_dir / "ablation" / f"{key}.npz", key


def head_ablation(results, output_dir, run):
    settings = sweep_settings(results, run.config)
    unablated, ablated = ablated_vectors(run, settings)
    table = score_heads(run, unablated, ablated)
    summary = {k: v for k, v in settings.items() if k not in ("blocks", "copies_per_forward")} | {"heads": table}
    _write(summary, output_dir)
    _plot(results, table, settings, output_dir)
    return summary


def score_heads(run, unablated: dict, ablated: dict) -> list[dict]:
    """Every head's accuracy drop (mean over folds) with its fold spread and a McNemar p-value, the probes
    for all heads fitted in one parallel batch on the same folds."""
    import numpy as np

    from probe.science.probes import FitTask, fit_all

    y = np.asarray(run.rows.table["label"])
    fold_list = run.splits.folds()  # the run's own, under its evaluation protocol
    tasks = [FitTask(("unablated", b), X, y, fold_list) for b, X in unablated.items()]
    tasks += [FitTask(key, X, y, fold_list) for key, X in ablated.items()]
    predictions = fit_all(tasks, run.services.make_probe(), cache=run.services.cache_dir / "probes")
    correct = {key: _correct(y, fold_list, predicted) for key, predicted in predictions.items()}
    table = []
    for block, head in ablated:
        before, after = correct[("unablated", block)], correct[(block, head)]
        drops = [before[test].mean() - after[test].mean() for _, test in fold_list]
        table.append({"block": block, "head": head, "accuracy_drop": float(np.mean(drops)),
                      "drop_std": float(np.std(drops)), "p_value": mcnemar(before, after)})
    return table


def _correct(y, fold_list, fold_predictions):
    import numpy as np

    correct = np.zeros(len(y), dtype=bool)
    for (_, test), predicted in zip(fold_list, fold_predictions):
        correct[test] = predicted == y[test]
    return correct


def mcnemar(before, after) -> float:
    """Exact two-sided McNemar test: do the rows the ablation breaks outnumber those it fixes by chance?"""
    from scipy.stats import binomtest

    broken = int((before & ~after).sum())
    fixed = int((~before & after).sum())
    return 1.0 if broken + fixed == 0 else float(binomtest(broken, broken + fixed, 0.5).pvalue)


def _write(summary, output_dir):
    from probe.store.files import write_text_atomic

    write_text_atomic(output_dir / "head_ablation.json", json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["block", "head", "accuracy_drop", "drop_std", "p_value"])
    writer.writeheader()
    writer.writerows(summary["heads"])
    write_text_atomic(output_dir / "head_ablation.csv", buffer.getvalue())


def _plot(results, table, settings, output_dir):
    """Blocks × heads, coloured by drop; the colour scale spans at least the fold spread, so a drop
    within noise stays pale; a dot marks heads significant after Bonferroni correction."""
    import numpy as np

    from probe.report.writers import _pyplot, _save

    blocks = settings["blocks"]
    n_heads = 1 + max(row["head"] for row in table)
    drops = np.full((len(blocks), n_heads), np.nan)
    for row in table:
        drops[blocks.index(row["block"]), row["head"]] = row["accuracy_drop"]
    spread = max(row["drop_std"] for row in table)
    limit = max(float(np.nanmax(np.abs(drops))), 2 * spread, 0.02)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * n_heads, 1.2 + 0.4 * len(blocks)))
    image = ax.imshow(drops, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    significant = [(r["head"], blocks.index(r["block"])) for r in table if r["p_value"] < 0.05 / len(table)]
    if significant:
        ax.scatter(*zip(*significant), marker="o", s=12, color="black", label="p < 0.05, Bonferroni")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("head"), ax.set_ylabel("block")
    ax.set_title(f"{results.experiment}: accuracy drop at layer {settings['probe_layer']} when one head is "
                 f"{settings['mode']}-ablated (largest fold std {spread:.3f})", fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy drop")
    return _save(fig, output_dir / "head_ablation.png")


@hookimpl
def register_reporters(register):
    register("head-ablation", head_ablation)


@hookimpl
def activation_hooks(model, config):
    heads = config.options.get("ablate_heads") or []
    by_block: dict[int, list[int]] = {}
    for block, head in heads:
        by_block.setdefault(block, []).append(head)
    return {f"blocks.{block}.attn.z": ablate(heads) for block, heads in by_block.items()}
