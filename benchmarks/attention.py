"""Forward-pass speed: Hugging Face eager vs sdpa vs probe's reimplemented attention (exact and fast paths).

    python benchmarks/attention.py [--batch 8] [--length 128] [--repeats 15] [--shape gpt2]

GPT-2 small's shape with random weights (the timing does not depend on the values). Runs are
interleaved round-robin so that drift in machine load hits every variant alike; the median is reported.
Every variant runs the same model object: swapped, restored, or switched between eager and sdpa.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

import probe
from probe.pipeline.models import gpt2_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shape", default="gpt2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    config = gpt2_config(args.shape)
    # One model for every variant, switched between timed runs, so that all of them read the very same
    # weight tensors (with separate copies the hooked probe variant once ran 4% faster than the unhooked one).
    model = GPT2LMHeadModel(config).to(args.device).eval()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.length), device=args.device)

    def hf(implementation: str):
        def setup():
            if probe.is_swapped(model):
                probe.restore_attention(model)
                model(ids)  # untimed: the first call after a swap or restore warms the new modules
            model.set_attn_implementation(implementation)
        return setup

    def reimplemented(pattern_hook: bool, fast: bool = False):
        def setup():
            model.set_attn_implementation("eager")
            if not probe.is_swapped(model):
                probe.swap_attention(model)
                model(ids)  # untimed, as above
            probe.set_fast_attention(model, fast)
            for point in probe.hook_points(model).values():
                point.fns.clear()
            if pattern_hook:
                probe.add_hook(model, "blocks.*.attn.pattern", lambda t, name: None)
        return setup

    variants = {
        "hf eager": hf("eager"),
        "hf sdpa": hf("sdpa"),
        "probe (no hooks)": reimplemented(False),
        "probe (pattern hook)": reimplemented(True),
        "probe fast path": reimplemented(False, fast=True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for setup in variants.values():  # warm-up
            setup()
            model(ids)
        for _ in range(args.repeats):
            for name, setup in variants.items():
                setup()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(ids)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in times.items()}
    eager, sdpa = median["hf eager"], median["hf sdpa"]
    print(f"{args.shape} shape, batch {args.batch} x {args.length} tokens, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'variant':<22} {'median ms':>10} {'x eager':>8} {'x sdpa':>8}")
    for name, t in median.items():
        print(f"{name:<22} {t * 1e3:>10.1f} {t / eager:>8.3f} {t / sdpa:>8.3f}")
    print(json.dumps({name: round(t * 1e3, 2) for name, t in median.items()}))


if __name__ == "__main__":
    main()
