"""torch.compile on a model whose attention probe swapped: the same numbers as compiled eager, and its speed.

    python benchmarks/compiled.py [--shape gpt2] [--batch 8] [--length 128] [--dtype float32] [--repeats 10]
    python benchmarks/compiled.py --smoke [--backend aot_eager]   # a tiny GPT-2: checks the script, measures nothing

Four variants of one GPT-2-shaped model (random weights; timing does not depend on their values): Hugging
Face eager, eager under torch.compile, probe's swapped attention, and the swapped model under torch.compile.
It reports each variant's median forward time, the compiled swapped model's largest difference from the
compiled eager one (and whether it is bitwise equal), from its own uncompiled run, and whether the swapped
model compiles to one graph (fullgraph=True) or needs breaks. Compilation time is reported apart and not
counted in the medians. Runs are interleaved so that drift in load hits every variant alike.
``--backend`` is torch.compile's (default inductor). On the CPU, inductor compiles C++ and its link step
fails when the environment's path holds a space (torch 2.13); the suite's smoke run uses ``aot_eager``,
which traces the same graph without generating code.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

import probe
from probe.pipeline.models import gpt2_config

TINY = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 500, "n_positions": 64}


def build(args) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(**TINY) if args.smoke else gpt2_config(args.shape)
    model = GPT2LMHeadModel(config).to(args.device, getattr(torch, args.dtype)).eval()
    model.set_attn_implementation("eager")
    return model


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_call(fn, ids, device: str) -> tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    logits = fn(ids).logits
    synchronize(device)
    return logits, time.perf_counter() - start


def one_graph(model, ids, backend: str) -> str:
    """'yes', or the first line of why fullgraph=True refused the swapped model."""
    torch.compiler.reset()
    try:
        torch.compile(model, fullgraph=True, backend=backend)(ids)
        return "yes"
    except Exception as error:  # the compiler's own error types vary by release; we only report them
        return "no: " + str(error).strip().splitlines()[0][:160]
    finally:
        torch.compiler.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gpt2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend (inductor, aot_eager, …)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 repeats, short sequences")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.length, args.repeats = 2, 16, 2
    hf_logging.disable_progress_bar()

    model = build(args)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), device=args.device)
    with torch.inference_mode():
        eager_out = model(ids).logits
        compiled_eager = torch.compile(model, backend=args.backend)
        compiled_eager_out, compile_eager_s = timed_call(compiled_eager, ids, args.device)

        probe.swap_attention(model)
        swapped_out = model(ids).logits
        print(f"swapped vs eager, uncompiled: bitwise {torch.equal(swapped_out, eager_out)}")
        graph = one_graph(model, ids, args.backend)
        compiled_swapped = torch.compile(model, backend=args.backend)
        compiled_swapped_out, compile_swapped_s = timed_call(compiled_swapped, ids, args.device)

        # Timing: switch the one model between eager and swapped, so every variant reads the same weights.
        variants = {
            "eager": (lambda: probe.restore_attention(model) if probe.is_swapped(model) else None, model),
            "eager compiled": (lambda: probe.restore_attention(model) if probe.is_swapped(model) else None,
                               compiled_eager),
            "probe": (lambda: None if probe.is_swapped(model) else probe.swap_attention(model), model),
            "probe compiled": (lambda: None if probe.is_swapped(model) else probe.swap_attention(model),
                               compiled_swapped),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats + 1):  # the first round warms (a recompile after a swap is not timed)
            for name, (setup, fn) in variants.items():
                setup()
                fn(ids)
                times[name].append(timed_call(fn, ids, args.device)[1])
    median = {name: statistics.median(t[1:]) for name, t in times.items()}

    difference = (compiled_swapped_out.float() - compiled_eager_out.float()).abs().max().item()
    own = (compiled_swapped_out.float() - swapped_out.float()).abs().max().item()
    result = {
        "shape": "tiny" if args.smoke else args.shape, "batch": args.batch, "length": args.length,
        "dtype": args.dtype, "device": device_name(args.device), "torch": torch.__version__, "backend": args.backend,
        "bitwise_vs_compiled_eager": bool(torch.equal(compiled_swapped_out, compiled_eager_out)),
        "max_abs_vs_compiled_eager": difference, "max_abs_vs_uncompiled_swapped": own,
        "one_graph": graph, "compile_s": {"eager": round(compile_eager_s, 1), "probe": round(compile_swapped_s, 1)},
        "median_ms": {name: round(t * 1e3, 3) for name, t in median.items()},
        "probe_compiled_x_eager_compiled": round(median["probe compiled"] / median["eager compiled"], 3),
    }
    print(f"{'variant':<16} {'median ms':>10} {'x eager':>8}")
    for name, t in median.items():
        print(f"{name:<16} {t * 1e3:>10.2f} {t / median['eager']:>8.3f}")
    print(json.dumps(result))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
