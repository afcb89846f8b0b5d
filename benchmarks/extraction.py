"""Extraction throughput and memory: probe.extract vs a naive loop.

    python benchmarks/extraction.py [--rows 512] [--memory-rows 1000 10000] [--memory-layers 0 1 2]

The model has GPT-2 small's shape (random weights; speed does not depend on the values) and a
byte-level BPE tokenizer trained offline on the built-in sentences. The naive loop is what one writes
first: batch 1, the LM-head model, output_hidden_states=True, all layers kept. probe.extract batches
length-sorted rows, runs the base model only up to the deepest layer asked for, and keeps only the
target vectors; it is timed for all 13 hidden states, and for layers 0-6 to show what stopping after
the deepest requested layer saves. Peak memory is the peak RSS of a fresh process extracting N rows,
for two N (layers 0-2 by default, so that 10,000 rows take minutes, not most of an hour).
"""

from __future__ import annotations

import argparse
import json
import resource
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
from tiny_gpt2 import build_tokenizer, corpus  # noqa: E402

from probe.data import whole_word_matches  # noqa: E402
from probe.extract import extract  # noqa: E402
from probe.swap import swap_attention  # noqa: E402


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


def naive(folder: Path, tokenizer, texts, spans) -> float:
    model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    kept = []
    start = time.perf_counter()
    with torch.no_grad():
        for text, (s, e) in zip(texts, spans):
            enc = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
            offsets = enc.pop("offset_mapping")[0].tolist()
            index = [i for i, (a, b) in enumerate(offsets) if text[max(a, s):min(b, e)].strip()]
            out = model(**enc, output_hidden_states=True)
            kept.append(torch.stack([h[0, index].mean(0) for h in out.hidden_states]))
    return time.perf_counter() - start


def probe_extract(folder: Path, tokenizer, texts, spans, cache: Path, batch_size: int = 32,
                  layers: list[int] = list(range(13))) -> float:
    def load():
        model = GPT2Model.from_pretrained(folder, attn_implementation="eager").eval()
        return swap_attention(model), tokenizer

    start = time.perf_counter()
    extract(load, texts, spans, layers=layers, folder=cache, batch_size=batch_size, progress=False)
    return time.perf_counter() - start


def memory_child(folder: str, n: int, layers: list[int]) -> None:
    """Run in a fresh process: extract n rows, print peak RSS in MiB."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts, spans = rows(n)
    with tempfile.TemporaryDirectory() as cache:
        probe_extract(Path(folder), tokenizer, texts, spans, Path(cache), layers=layers)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--memory-layers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    if args.child:
        memory_child(args.child[0], int(args.child[1]), args.memory_layers)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tokenizer = setup(folder)
        texts, spans = rows(args.rows)
        n_tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
        t_naive = naive(folder, tokenizer, texts, spans)
        t_probe = probe_extract(folder, tokenizer, texts, spans, Path(tmp) / "cache")
        t_half = probe_extract(folder, tokenizer, texts, spans, Path(tmp) / "cache-half", layers=list(range(7)))
        print(f"GPT-2 small shape, {args.rows} sentences, {n_tokens} tokens, all 13 hidden states, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"naive loop (batch 1, LM head, output_hidden_states): {n_tokens / t_naive:8.0f} tokens/s")
        print(f"probe.extract (batch 32, length-sorted, base model):  {n_tokens / t_probe:8.0f} tokens/s"
              f"  ({t_naive / t_probe:.2f}x)")
        print(f"probe.extract, layers 0-6 only (stops after block 6):   {n_tokens / t_half:8.0f} tokens/s"
              f"  ({t_naive / t_half:.2f}x)")
        for n in args.memory_rows:
            layers = [str(layer) for layer in args.memory_layers]
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), "--memory-layers", *layers],
                                 capture_output=True, text=True, check=True)
            print(f"peak RSS extracting {n:>6} sentences (layers {' '.join(layers)}): "
                  f"{float(out.stdout.strip().splitlines()[-1]):7.0f} MiB")


if __name__ == "__main__":
    main()
