"""Extraction throughput: the residual stream of every layer, by probe and by TransformerLens.

    python benchmarks/throughput.py [--shapes gpt2 smollm2] [--dtype bfloat16] [--batch 32] [--length 256]
    python benchmarks/throughput.py --smoke     # tiny shapes on the CPU: checks the script, measures nothing

For each shape (random weights; speed does not depend on their values) and each way of reading the
residual stream of all layers, kept on the device:
- probe, extract: ``probe.pipeline.extract.run_to_layer`` on the swapped model, as ``probe run`` extracts;
- probe, every hook point: ``capture(model, "*")``, as ``probe.run_with_cache`` keeps everything;
- TransformerLens 4's ``TransformerBridge.run_with_cache`` on its own copy of the model (residual stream only,
  stopped after the last block like probe's extract; and every hook point, the whole model, like probe's),
  when it is installed (``pip install transformer-lens``); otherwise the row says it was not run.
Each reports tokens per second (median of --repeats, interleaved) and the fraction of the card's dense
bf16/fp16 peak that the forward's matrix work reaches (2 x non-embedding parameters + attention, per token).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import probe
from probe.core.hooks import capture
from probe.pipeline.extract import run_to_layer

SHAPES = {
    "gpt2": dict(family="gpt2", layers=12, width=768, heads=12, kv_heads=12, mlp=3072, vocab=50257),
    "smollm2": dict(family="llama", layers=30, width=576, heads=9, kv_heads=3, mlp=1536, vocab=49152),
    "tiny-gpt2": dict(family="gpt2", layers=2, width=64, heads=4, kv_heads=4, mlp=256, vocab=500),
    "tiny-llama": dict(family="llama", layers=2, width=64, heads=4, kv_heads=2, mlp=128, vocab=500),
}
# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, FLOP/s.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def hf_model(shape: dict, length: int):
    if shape["family"] == "gpt2":
        config = GPT2Config(n_layer=shape["layers"], n_embd=shape["width"], n_head=shape["heads"],
                            n_inner=shape["mlp"], vocab_size=shape["vocab"], n_positions=max(1024, length))
        return GPT2LMHeadModel(config)
    config = LlamaConfig(num_hidden_layers=shape["layers"], hidden_size=shape["width"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         intermediate_size=shape["mlp"], vocab_size=shape["vocab"],
                         max_position_embeddings=max(2048, length))
    return LlamaForCausalLM(config)


def lens_model(shape: dict, length: int, dtype, device):
    """The same shape (its own copy) in a TransformerLens 4 TransformerBridge, or None when TransformerLens is
    not installed. The bridge wants a model folder with a tokenizer: a word-level one stands in (ids only)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    import tempfile

    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = hf_model(shape, length).to(device, dtype).eval()
    folder = tempfile.mkdtemp(prefix="probe-lens-")
    model.config.save_pretrained(folder)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(shape["vocab"])}, unk_token="w0"))
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w1", bos_token="w2",
                            eos_token="w3").save_pretrained(folder)
    return TransformerBridge.boot_transformers(folder, hf_model=model, tokenizer=AutoTokenizer.from_pretrained(folder))


def flops_per_token(shape: dict, length: int) -> float:
    """Matrix work of one token's forward through the blocks (no unembedding): 2 x the blocks' weights,
    plus the scores and the weighted sum of values over ``length`` keys (causal: half of them on average)."""
    width, kv = shape["width"], shape["width"] * shape["kv_heads"] // shape["heads"]
    mlp_matrices = 3 if shape["family"] == "llama" else 2
    weights = width * (width + 2 * kv) + width * width + mlp_matrices * width * shape["mlp"]
    attention = 2 * width * length / 2
    return shape["layers"] * 2 * (weights + attention)


def peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAKS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return name, PEAKS[key]
    return name, None


def readers(shape, args, device, dtype):
    """name → a function running one forward that keeps every layer's residual stream on the device."""
    torch.manual_seed(0)
    model = hf_model(shape, args.length).to(device, dtype).eval()
    model.set_attn_implementation("eager")
    probe.swap_attention(model)
    layers = list(range(shape["layers"] + 1))
    out = {
        "probe extract": lambda ids: run_to_layer(model, {"input_ids": ids}, layers[-1], layers),
        "probe every hook point": lambda ids: _captured(model, ids),
    }
    lens = lens_model(shape, args.length, dtype, device)
    if lens is not None:
        out["TransformerLens resid"] = lambda ids: lens.run_with_cache(
            ids, names_filter=lambda name: name.endswith(("hook_resid_pre", "hook_resid_post")),
            stop_at_layer=shape["layers"])
        out["TransformerLens every hook point"] = lambda ids: lens.run_with_cache(ids)
    return out, lens is not None


def _captured(model, ids):
    with capture(model, "*") as seen:
        model(input_ids=ids, use_cache=False)
        return dict(seen)


def measure(name: str, shape: dict, args, device, dtype) -> list[dict]:
    functions, has_lens = readers(shape, args, device, dtype)
    ids = torch.randint(0, shape["vocab"], (args.batch, args.length), device=device)
    times = {reader: [] for reader in functions}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first round warms up (kernels, allocator)
            for reader, function in functions.items():
                _synchronize(device)
                start = time.perf_counter()
                function(ids)
                _synchronize(device)
                times[reader].append(time.perf_counter() - start)
    card, card_peak = peak(device)
    tokens = args.batch * args.length
    rows = []
    for reader, seconds in times.items():
        median = statistics.median(seconds[1:])
        rate = tokens / median
        rows.append({"shape": name, "reader": reader, "tokens_per_s": round(rate), "median_ms": round(median * 1e3, 2),
                     "peak_fraction": round(rate * flops_per_token(shape, args.length) / card_peak, 3)
                     if card_peak else None, "card": card})
    if not has_lens:
        rows.append({"shape": name, "reader": "TransformerLens", "not_run": "transformer_lens is not installed"})
    return rows


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["gpt2", "smollm2"], choices=list(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, float32, 2 repeats")
    args = parser.parse_args()
    if args.smoke:
        args.shapes, args.dtype, args.batch, args.length, args.repeats = ["tiny-gpt2", "tiny-llama"], "float32", 2, 16, 2
    hf_logging.disable_progress_bar()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = [row for name in args.shapes for row in measure(name, SHAPES[name], args, device, dtype)]
    print(f"batch {args.batch} x {args.length} tokens, {args.dtype}, torch {torch.__version__}")
    for row in rows:
        if "not_run" in row:
            print(f"{row['shape']:<10} {row['reader']:<34} not run: {row['not_run']}")
        else:
            fraction = f"{row['peak_fraction']:.1%} of peak" if row["peak_fraction"] is not None else ""
            print(f"{row['shape']:<10} {row['reader']:<34} {row['tokens_per_s']:>12,} tokens/s  {fraction}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
