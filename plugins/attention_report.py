"""Attention report: where does the ambiguous word look?

For the target token of every row, at every block and head: the entropy of its attention pattern
(low = the head looks at one or two words; high = it spreads out), and for the example rows the words
it attends to most — the "which words does *creature* attend to" picture, per head. Use it with
``reporters: [..., attention-report]``. Options (under the config's ``options.attention_report``):
``examples`` (how many rows to list, default 3), ``top_k`` (words per head, default 3).

Writes attention_report.json, attention_report.md and attention_entropy.png (blocks × heads). Blocks are
numbered from 0; block i reads layer i (hidden state i) and writes layer i + 1, as everywhere in probe.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

# numpy is imported where it is used: every `probe` command loads the installed plugins.

from probe import hookimpl

if TYPE_CHECKING:  # for annotations only
    import numpy as np


def target_patterns(model, tokenizer, texts, spans, batch_size: int = 16):
    """Yield (tokens, target index, patterns (blocks, heads, keys)) for each row, in order."""
    import torch

    from probe.pipeline.data import span_token_indices
    from probe.report.attention_view import run_padded

    n_blocks = sum(1 for name in _names(model) if name.endswith(".attn.pattern"))
    names = [f"blocks.{i}.attn.pattern" for i in range(n_blocks)]
    for start in range(0, len(texts), batch_size):
        batch_texts, batch_spans = texts[start : start + batch_size], spans[start : start + batch_size]
        enc, offsets, seen = run_padded(model, tokenizer, batch_texts, names)
        stacked = torch.stack([seen[n] for n in names], dim=1).float().cpu()  # (batch, blocks, heads, q, k)
        for i, (text, (s, e)) in enumerate(zip(batch_texts, batch_spans)):
            length = int(enc["attention_mask"][i].sum())
            target = span_token_indices(text, offsets[i], s, e)[-1]
            tokens = [tokenizer.decode([t]).strip() or "␣" for t in enc["input_ids"][i, :length]]
            yield tokens, target, stacked[i, :, :, target, :length].numpy()


def _names(model):
    from probe.core.hooks import hook_points

    return hook_points(model)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits over the last axis (0·log 0 = 0)."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=-1)


def attention_report(results, output_dir, run):
    from probe.store.files import write_text_atomic

    options = run.config.options.get("attention_report", {})
    mean_entropy, examples = _entropies_and_examples(run, options.get("examples", 3), options.get("top_k", 3))
    report = {"mean_entropy_bits": mean_entropy.round(4).tolist(), "examples": examples}
    write_text_atomic(output_dir / "attention_report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(output_dir / "attention_report.md", _markdown(results, mean_entropy, examples))
    _plot(results, mean_entropy, output_dir)


def _entropies_and_examples(run, n_examples: int, top_k: int):
    """Each head's mean entropy (blocks, heads) and the example rows' top words. What the model computes is
    kept in the cache under the key of the activations it comes from, so a rerun on a full cache loads no
    model; each example's text and label are read from the rows now."""
    import numpy as np

    from probe.pipeline.extract import cache_key
    from probe.pipeline.run import feature_key
    from probe.store.caches import load_json_entry, save_json_entry

    features = feature_key(run.services, run.rows, "all", "reimplemented")
    key = cache_key({"features": features, "report": "attention_report", "examples": n_examples, "top_k": top_k})
    path = run.services.cache_dir / "attention" / f"{key}.json"
    saved = load_json_entry(path)  # the entry proves its key and content, else it is named and removed
    if not isinstance(saved, dict) or not {"mean_entropy_bits", "dtype", "examples"} <= saved.keys():
        saved = _computed(run, n_examples, top_k)  # not there yet, or damaged: computed again
        save_json_entry(path, saved)
    texts, labels = run.rows.table["text"], run.rows.table["label"]
    examples = [{"text": texts[n], "label": labels[n], **example}
                for n, example in enumerate(saved["examples"])]
    return np.asarray(saved["mean_entropy_bits"], dtype=saved["dtype"]), examples


def _computed(run, n_examples: int, top_k: int) -> dict:
    import numpy as np

    model, tokenizer = run.services.load_model()  # the run's model, probe's attention swapped in
    entropies, examples = [], []
    for n, (tokens, target, patterns) in enumerate(target_patterns(model, tokenizer, run.rows.table["text"],
                                                                   run.rows.spans)):
        entropies.append(entropy(patterns))  # (blocks, heads)
        if n < n_examples:
            top = np.argsort(-patterns, axis=-1)[..., :top_k]
            examples.append({
                "target_token": tokens[target],
                "top_tokens": [[[(tokens[k], round(float(patterns[l, h, k]), 3)) for k in top[l, h]]
                                for h in range(patterns.shape[1])] for l in range(patterns.shape[0])],
            })
    mean_entropy = np.mean(entropies, axis=0)
    return {"mean_entropy_bits": mean_entropy.tolist(), "dtype": str(mean_entropy.dtype), "examples": examples}


def _markdown(results, mean_entropy, examples) -> str:
    lines = [f"# Attention from the target word — {results.experiment}", "",
             "Mean entropy (bits) of the target token's attention, per block (rows) and head (columns):", "",
             "| block | " + " | ".join(str(h) for h in range(mean_entropy.shape[1])) + " |",
             "|---" * (mean_entropy.shape[1] + 1) + "|"]
    lines += [f"| {l} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for l, row in enumerate(mean_entropy)]
    for example in examples:
        lines += ["", f"## {example['text']} ({example['label']})", "",
                  f"Words `{example['target_token']}` attends to most, per block and head:", ""]
        for l, heads in enumerate(example["top_tokens"]):
            cells = ["; ".join(f"{tok} {w:.2f}" for tok, w in head) for head in heads]
            lines.append(f"- block {l}: " + " | ".join(f"h{h}: {c}" for h, c in enumerate(cells)))
    return "\n".join(lines) + "\n"


def _plot(results, mean_entropy, output_dir):
    from probe.report.writers import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1 + 0.45 * mean_entropy.shape[1], 1 + 0.35 * mean_entropy.shape[0]))
    image = ax.imshow(mean_entropy, cmap="magma", aspect="auto")
    ax.set_xlabel("head"), ax.set_ylabel("block (0 = first)")
    ax.set_title(f"{results.experiment}: entropy of the target's attention (bits)", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(fig, output_dir / "attention_entropy.png")


@hookimpl
def register_reporters(register):
    register("attention-report", attention_report)
