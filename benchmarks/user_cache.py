"""What one cache per user saves `probe.run_with_cache` on a GGUF model: each line is a new Python process.

    .venv/bin/python benchmarks/user_cache.py [--model smollm2-135m]

1. the GGUF file loaded as before the shared cache (transformers dequantizes it in every process);
2. run_with_cache with an empty cache (converts once into it);
3. run_with_cache again, a new process on the same cache (reads the converted checkpoint).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

TEXT = "The mole dug a tunnel."
BEFORE = """
from probe.pipeline.models import load_model, load_tokenizer
from probe.pipeline.run import resolve_model
source = resolve_model({model!r}, None)
model, tokenizer = load_model(source), load_tokenizer(source)
model(**tokenizer([{text!r}], return_tensors="pt"))
"""
NOW = "import probe; probe.run_with_cache({model!r}, {text!r})"


def timed(code: str, cache: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PROBE_CACHE": cache})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        before = timed(BEFORE.format(model=args.model, text=TEXT), cache)
        cold = timed(NOW.format(model=args.model, text=TEXT), cache)
        warm = timed(NOW.format(model=args.model, text=TEXT), cache)
    print(f"{args.model}, new process each: GGUF loaded as before {before:.1f} s; run_with_cache, empty cache "
          f"{cold:.1f} s; run_with_cache, shared cache {warm:.1f} s ({before / warm:.1f}× faster than before)")


if __name__ == "__main__":
    main()
