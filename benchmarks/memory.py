"""Peak memory of a whole `probe run` as the rows grow: synthetic rows (benchmarks/synthetic.py), each size in
a fresh process on an empty cache, its peak resident set size read with ``resource`` once it has exited.

    python benchmarks/memory.py --model minilm-l6 --rows 10000 100000 [--probe logreg|sgd] [--layers 0]

The run probes the target's vector at ``--layers`` (default: layer 0, the embeddings, so that extraction
runs no block and 100,000 rows take minutes on a small machine; the vectors are as wide as any layer's, so
what is kept, read and fitted is the same size) in batches of ``--batch-size`` rows (default 256: fewer,
taller batches; the same in every run compared) with 5 folds, no controls, and writes only
results.json and results.csv; ``--jobs 1`` keeps every fit in the measured process (joblib's workers
would be processes of their own, whose memory ``ru_maxrss`` of the children would not sum).
``--probe sgd`` fits by stochastic gradient descent over blocks of rows (the streaming fit) instead of the
exact logistic regression. Prints one line per size: rows, peak RSS (MiB), wall seconds, and the ratio of
each peak to the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402  (benchmarks/synthetic.py, beside this file)

# Runs `probe run` as a child, then prints the child's peak RSS (KiB on Linux) as JSON.
MEASURE = (
    "import json, resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps({'rc': done.returncode, 'stderr': done.stderr[-3000:],\n"
    "                  'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def config_text(data: Path, probe: str, layers: list[int], batch_size: int) -> str:
    return json.dumps({  # YAML reads JSON
        "name": "memory", "dataset": {"name": "file", "path": str(data)}, "probe": probe,
        "layers": layers, "positions": ["target"], "controls": [], "reporters": ["json", "csv"],
        "metrics": [], "batch_size": batch_size,
    })


def measure(model: str, n_rows: int, probe: str, layers: list[int], batch_size: int, folder: Path) -> dict:
    """One `probe run` on ``n_rows`` synthetic rows, on an empty cache: its peak RSS and wall time."""
    data = synthetic.write(folder / f"rows-{n_rows}.jsonl", n_rows)
    config = folder / f"memory-{n_rows}.yaml"
    config.write_text(config_text(data, probe, layers, batch_size))
    probe_command = Path(sys.executable).with_name("probe")
    command = [str(probe_command), "run", str(config), "--model", model, "--quiet", "--jobs", "1", "--device", "cpu",
               "--cache-dir", str(folder / f"cache-{n_rows}"), "--output", str(folder / f"run-{n_rows}")]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if answer["rc"] != 0:
        raise SystemExit(f"probe run failed on {n_rows} rows:\n{answer['stderr']}")
    return {"rows": n_rows, "peak_mib": answer["peak_kib"] / 1024, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--probe", default="logreg", help="a registered probe name (logreg, sgd, …)")
    parser.add_argument("--layers", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe-memory-") as folder:
        first = None
        for n_rows in args.rows:
            found = measure(args.model, n_rows, args.probe, args.layers, args.batch_size, Path(folder))
            first = first or found["peak_mib"]
            print(f"{found['rows']:>8} rows  peak RSS {found['peak_mib']:8.1f} MiB  {found['seconds']:7.1f} s  "
                  f"×{found['peak_mib'] / first:.3f} of the first", flush=True)


if __name__ == "__main__":
    main()
