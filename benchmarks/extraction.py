"""Extraction throughput and memory: probe.pipeline.extract (exact and fast paths) vs a naive loop and TransformerLens.

    python benchmarks/extraction.py [--rows 256] [--repeats 3] [--memory-rows 1000 10000] [--memory-layers 0 1 2]

The model has GPT-2 small's shape (random weights; speed does not depend on the values) and a
byte-level BPE tokenizer trained offline on the built-in sentences. Every variant keeps all 13 hidden
states at the target word, from a model loaded beforehand (loading is not timed):

- the naive loop is what one writes first: batch 1, the LM-head model, output_hidden_states=True;
- probe.pipeline.extract batches length-sorted rows, runs the base model only up to the deepest layer asked for
  and keeps only the target vectors, on probe's exact path (bit-identical to eager) and on its fast path
  (scaled_dot_product_attention); it is also timed for layers 0-6, to show what stopping early saves,
  and for the target alone (an experiment's default positions: [target]), where a causal model's
  tokens after the target are not computed;
- TransformerLens (when installed: pip install -e ".[bench]"): TransformerBridge.run_with_cache on the
  same length-sorted batches, caching only the residual stream (names_filter), with no logits
  (return_type=None), the target vectors pooled as probe pools them.

The variants run interleaved, in a rotating order, ``--repeats`` times; the figures are medians, and
each speed-up is the median of the per-repeat ratios (a shared machine's load changes between repeats,
less within one). Peak memory is the peak RSS of a fresh process extracting N rows, for two N (layers
0-2 by default, so that 10,000 rows take minutes, not most of an hour; ``--memory-rows`` with no value
skips it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_gpt2 import build_tokenizer, corpus

from probe.core.swap import swap_attention
from probe.pipeline.data import whole_word_matches
from probe.pipeline.extract import extract

ALL_LAYERS = list(range(13))  # GPT-2 small: the embeddings and 12 blocks


def rows(n: int) -> tuple[list[str], list[tuple[int, int]]]:
    """n sentences with a target span: the built-in sentences, cycled."""
    records = []
    for path in sorted((ROOT / "probe" / "builtin" / "data").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts, spans = [], []
    for i in range(n):
        record = records[i % len(records)]
        texts.append(record["text"])
        spans.append(whole_word_matches(record["text"], record["target"])[0])
    return texts, spans


def setup(folder: Path):
    tokenizer = build_tokenizer(corpus())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
    return tokenizer


def naive(folder: Path, tokenizer):
    """The loop one writes first: batch 1, the LM-head model, output_hidden_states=True."""
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()

    def run(texts, spans):
        kept = []
        with torch.no_grad():
            for text, (s, e) in zip(texts, spans):
                enc = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
                offsets = enc.pop("offset_mapping")[0].tolist()
                index = [i for i, (a, b) in enumerate(offsets) if text[max(a, s):min(b, e)].strip()]
                out = model(**enc, output_hidden_states=True)
                kept.append(torch.stack([h[0, index].mean(0) for h in out.hidden_states]))
        return kept

    return run


def probe_extract(folder: Path, tokenizer, cache: Path, fast: bool, layers=ALL_LAYERS, batch_size: int = 32,
                  positions=("target", "last")):
    """probe.pipeline.extract on a model swapped beforehand; each call extracts into a fresh cache folder. With
    ``positions=["target"]`` (an experiment's default) a causal model runs only up to each target."""
    model = swap_attention(GPT2Model.from_pretrained(folder, attn_implementation="eager").eval(), fast=fast)
    calls = iter(range(10**6))

    def run(texts, spans):
        store = extract(lambda: (model, tokenizer), texts, spans, layers=layers, folder=cache / str(next(calls)),
                        batch_size=batch_size, positions=positions, progress=False)
        return store

    return run


def transformer_lens(folder: Path, batch_size: int = 32):
    """TransformerLens's run_with_cache on probe's length-sorted batches, caching only the residual stream."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from probe.pipeline.extract import encode_batch, pool_targets

    tokenizer = AutoTokenizer.from_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer, device="cpu")
    bridge.eval()
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(bridge.cfg.n_layers)]

    def run(texts, spans):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        kept = []
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoding, targets, _ = encode_batch(tokenizer, [texts[i] for i in batch], [spans[i] for i in batch])
                _, cache = bridge.run_with_cache(encoding["input_ids"], attention_mask=encoding["attention_mask"],
                                                 names_filter=lambda name: name in names, return_type=None)
                kept.append([pool_targets(cache[name], targets, "mean") for name in names])
        return kept

    return run


def interleaved(variants: dict, texts, spans, repeats: int) -> dict[str, list[float]]:
    """Seconds per variant per repeat; the order rotates each repeat so no variant always runs first."""
    names = list(variants)
    times = {name: [] for name in names}
    for name in names:  # untimed: the first forward of each model pays for one-off allocations
        variants[name](texts[:4], spans[:4])
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name](texts, spans)
            times[name].append(time.perf_counter() - start)
            print(f"  repeat {r + 1}: {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    return times


def memory_child(folder: str, n: int, layers: list[int]) -> None:
    """Run in a fresh process: extract n rows, print peak RSS in MiB."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts, spans = rows(n)
    with tempfile.TemporaryDirectory() as cache:
        probe_extract(Path(folder), tokenizer, Path(cache), fast=True, layers=layers)(texts, spans)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--memory-layers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, help="torch intra-op threads [default: torch's, one per core]")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    if args.child:
        memory_child(args.child[0], int(args.child[1]), args.memory_layers)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tokenizer = setup(folder)
        texts, spans = rows(args.rows)
        n_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
        cache = Path(tmp) / "cache"
        variants = {
            "naive loop (batch 1, LM head, output_hidden_states)": naive(folder, tokenizer),
            "probe.pipeline.extract, exact path (batch 32, length-sorted)": probe_extract(folder, tokenizer, cache / "e", False),
            "probe.pipeline.extract, fast path (batch 32, length-sorted)": probe_extract(folder, tokenizer, cache / "f", True),
            "probe.pipeline.extract, fast path, layers 0-6 only": probe_extract(folder, tokenizer, cache / "h", True,
                                                                       layers=list(range(7))),
            "probe.pipeline.extract, fast path, target only (stops at it)": probe_extract(folder, tokenizer, cache / "t", True,
                                                                                 positions=["target"]),
        }
        if importlib.util.find_spec("transformer_lens"):
            variants["TransformerLens run_with_cache (batch 32, resid only)"] = transformer_lens(folder)
        times = interleaved(variants, texts, spans, args.repeats)
        print(f"GPT-2 small shape, {args.rows} sentences, {n_tokens} tokens, all 13 hidden states unless said, "
              f"{args.repeats} interleaved repeats, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f}")
        naive_times = next(iter(times.values()))
        tl_times = times.get("TransformerLens run_with_cache (batch 32, resid only)")
        for name, seconds in times.items():
            vs_naive = statistics.median(n / t for n, t in zip(naive_times, seconds))
            vs_tl = f"  {statistics.median(t / s for t, s in zip(tl_times, seconds)):5.2f}x TL" if tl_times else ""
            print(f"{name:<58} {n_tokens / statistics.median(seconds):7.0f} tokens/s  {vs_naive:5.2f}x naive{vs_tl}")
        for n in args.memory_rows:
            layers = [str(layer) for layer in args.memory_layers]
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), "--memory-layers", *layers],
                                 capture_output=True, text=True, check=True)
            print(f"peak RSS extracting {n:>6} sentences (layers {' '.join(layers)}): "
                  f"{float(out.stdout.strip().splitlines()[-1]):7.0f} MiB")


if __name__ == "__main__":
    main()
