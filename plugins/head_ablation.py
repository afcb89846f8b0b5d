"""Head ablation: how much of the sense information does each attention head carry?

Knock out one head at a time — zero its output ``z`` (``mode: zero``) or replace it with its mean over
the dataset's tokens (``mode: mean``, which keeps the head's constant contribution and removes only
what depends on the input) — re-extract the target vectors, re-probe, and report the accuracy drop.
A head whose ablation costs accuracy was moving sense information into the target's vector.

Two ways in, both through the attention core's hook points:

- reporter ``head-ablation``: the per-head sweep. Options under ``options.head_ablation``:
  ``mode`` (zero | mean, default zero), ``layers`` (blocks to sweep, default all before the probed
  layer), ``probe_layer`` (default: the best layer of the unablated run), ``position`` (default target).
  Writes head_ablation.json, head_ablation.csv and head_ablation.png (blocks × heads).
- ``activation_hooks``: ``options.ablate_heads: [[block, head], ...]`` zeroes those heads for the whole
  experiment, so every layer's probe runs on the ablated model.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import torch

from probe import hookimpl
from probe.extract import cache_key, extract
from probe.hooks import add_hook, capture
from probe.io import write_text_atomic
from probe.probes import cross_validate
from probe.report import _pyplot, _save
from probe.swap import is_swapped, swap_attention


def ablate(heads: list[int], replacement: torch.Tensor | None = None):
    """A hook for ``blocks.{i}.attn.z`` (batch, head, pos, d_head): zero ``heads`` or set them to ``replacement``."""

    def hook(z: torch.Tensor, name: str) -> torch.Tensor:
        z = z.clone()
        for head in heads:
            z[:, head] = 0.0 if replacement is None else replacement[head].to(z.dtype)
        return z

    return hook


def mean_z(model, tokenizer, texts, blocks: list[int], batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Each head's z averaged over every real (non-padding) token of ``texts``: block → (heads, d_head)."""
    sums, count = {}, 0
    tokenizer.padding_side = "right"
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        real = enc["attention_mask"].bool()
        with capture(model, [f"blocks.{b}.attn.z" for b in blocks]) as seen, torch.no_grad():
            model(**enc)
        for b in blocks:
            z = seen[f"blocks.{b}.attn.z"].float().transpose(1, 2)[real]  # (tokens, heads, d_head)
            sums[b] = sums.get(b, 0) + z.sum(0)
        count += int(real.sum())
    return {b: total / count for b, total in sums.items()}


def head_ablation(results, output_dir, context):
    config = context.config
    options = config.options.get("head_ablation", {})
    mode = options.get("mode", "zero")
    if mode not in ("zero", "mean"):
        raise ValueError(f"options.head_ablation.mode is {mode!r}; accepted values: zero, mean")
    position = options.get("position", config.positions[0])
    rows = [r for r in results["layers"] if r["position"] == position and r["subset"] == "all"]
    probe_layer = options.get("probe_layer", max(rows, key=lambda r: r["accuracy"])["layer"])
    baseline = next(r["accuracy"] for r in rows if r["layer"] == probe_layer)
    blocks = options.get("layers", list(range(probe_layer)))  # block b feeds layers b+1 and up

    model, tokenizer = context.load_model()
    if not is_swapped(model):
        swap_attention(model)
    n_heads = model.config.num_attention_heads
    texts, spans = context.rows["text"], context.spans
    labels, groups = np.asarray(context.rows["label"]), context.rows["group"]
    means = mean_z(model, tokenizer, texts, blocks) if mode == "mean" else {}

    drops = np.full((len(blocks), n_heads), np.nan)
    for i, block in enumerate(blocks):
        for head in range(n_heads):
            handles = add_hook(model, f"blocks.{block}.attn.z", ablate([head], means.get(block)))
            try:
                key = cache_key({"ablate": [block, head], "mode": mode, "layer": probe_layer,
                                 "unablated": [s.folder.name for s in context.stores.values()]})
                store = extract(lambda: (model, tokenizer), texts, spans, layers=[probe_layer],
                                folder=context.cache_dir / "ablation" / key, pooling=config.pooling,
                                batch_size=config.batch_size, progress=False)
            finally:
                for handle in handles:
                    handle.remove()
            scores = cross_validate(store.layer(position, probe_layer), labels, groups, context.make_probe(),
                                    config.folds, config.seed)
            drops[i, head] = baseline - scores["accuracy"]

    table = [{"block": b, "head": h, "accuracy_drop": float(drops[i, h])}
             for i, b in enumerate(blocks) for h in range(n_heads)]
    summary = {"mode": mode, "position": position, "probe_layer": probe_layer, "baseline_accuracy": baseline,
               "heads": table}
    write_text_atomic(output_dir / "head_ablation.json", json.dumps(summary, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["block", "head", "accuracy_drop"])
    writer.writeheader()
    writer.writerows(table)
    write_text_atomic(output_dir / "head_ablation.csv", buffer.getvalue())
    _plot(results, drops, blocks, summary, output_dir)
    return summary


def _plot(results, drops, blocks, summary, output_dir):
    plt = _pyplot()
    limit = max(float(np.nanmax(np.abs(drops))), 1e-3)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * drops.shape[1], 1.2 + 0.4 * drops.shape[0]))
    image = ax.imshow(drops, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("head"), ax.set_ylabel("block")
    ax.set_title(f"{results['experiment']}: accuracy drop at layer {summary['probe_layer']} "
                 f"when one head is {summary['mode']}-ablated", fontsize=9)
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
