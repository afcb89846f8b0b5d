"""What the cache's checks cost a cached rerun: each check timed on a cache a run has filled.

    .venv/bin/probe run experiments/mole.yaml --model minilm-l6 --cache-dir /tmp/cc --output /tmp/cc-out
    .venv/bin/python benchmarks/cache_checks.py /tmp/cc

Prints the median of 20 calls (ms) of each check next to the plain read it adds to: the weights
fingerprint (its memos read back), the attention viewer's entry, every cached fit, the kept figures and the
feature chunks (their checksum was checked before; the key is new).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from probe.pipeline.models import weights_fingerprint
from probe.pipeline.run import resolve_model
from probe.store import caches
from probe.store.chunks import damage


def median_ms(call, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def plain_fit_reads(fits: list[Path]) -> None:
    for path in fits:
        with np.load(path) as saved:
            [saved[name] for name in saved.files]


def plain_json_read(entry: Path):
    """The value alone, as a read without the check would parse it."""
    return json.loads(entry.read_bytes().partition(b"\n")[2])


def main(cache: Path, model: str = "minilm-l6") -> None:
    path = resolve_model(model, None)
    memos = cache / "models" / "digests"
    print(f"weights fingerprint of {path} (memos read back): {median_ms(lambda: weights_fingerprint(path, memos))} ms")
    for entry in sorted((cache / "attention").glob("*.json")):
        print(f"attention entry {entry.name}: checked {median_ms(lambda: caches.load_json_entry(entry))} ms, "
              f"plain read {median_ms(lambda: plain_json_read(entry))} ms")
    fits = sorted((cache / "probes").glob("*.npz"))
    print(f"{len(fits)} cached fits: checked {median_ms(lambda: [caches.load(p.parent, p.stem) for p in fits])} ms, "
          f"plain read {median_ms(lambda: plain_fit_reads(fits))} ms")
    figures = sorted((cache / "figures").iterdir()) if (cache / "figures").is_dir() else []
    checked = median_ms(lambda: [caches.entry_damage(f, f.name) for f in figures])
    print(f"{len(figures)} kept figure entries: checked {checked} ms")
    chunks = sorted((cache / "features").glob("*/chunk-*.safetensors"))
    print(f"{len(chunks)} feature chunks: checked {median_ms(lambda: [damage(c) for c in chunks], 5)} ms")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
