"""Extraction and fitting at scale: `probe run` against the plain script (benchmarks/plain_script.py) on the
same synthetic rows (benchmarks/synthetic.py), each in a fresh process on an empty cache.

    python benchmarks/scale.py --model minilm-l6 --rows 2000 [--skip-script]

Both probe every layer's vector at the target with 5-fold cross-validation and a standardised logistic
regression (C=0.1), fits one at a time (probe ``--jobs 1``; the script holds BLAS to one thread). Printed
per program: tokens per second of extraction (the rows' tokens, special ones included, over probe's
*extract* phase, which includes loading the weights; for the script, over the time to its first printed
score, which also holds its imports, loading and first layer's fits), fits per second (layers × 5 folds over probe's *probe* phase, which also
scores, bootstraps and runs the nested layer choice; the script's as its layers after the first over the
time from its first printed score to its end), the wall time and the peak RSS.

CoarseWSD-20's scale is 34,000 rows (24k training sentences, 10k test); on a shared 2-core machine the
script's batch-1 extraction of that many rows takes hours, so give ``--rows`` the fraction you can wait
for and say which (docs/benchmarks.md does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synthetic  # noqa: E402

# `probe run` in this child, with run_experiment's phase timings; then the child's own peak RSS (KiB).
PROBE_DRIVER = (
    "import json, resource, sys, time\n"
    "from probe.pipeline.config import load_config\n"
    "from probe.pipeline.progress import LINE\n"
    "from probe.pipeline.run import run_experiment\n"
    "config_path, model, cache, out = sys.argv[1:5]\n"
    "timings = {}\n"
    "config = load_config(config_path, {'model': model, 'device': 'cpu'})\n"
    "results = run_experiment(config, out, cache_dir=cache, progress=LINE, n_jobs=1, timings=timings)\n"
    "print(json.dumps({'timings': timings, 'layers': len(results.rows),\n"
    "                  'peak_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
)
# The plain script as a child: its wall time, peak RSS and when it printed its first layer's score.
SCRIPT_DRIVER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter(); first = None\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)\n"
    "lines = []\n"
    "for line in child.stdout:\n"
    "    first = first or time.perf_counter() - start\n"
    "    lines.append(line)\n"
    "child.wait(); total = time.perf_counter() - start\n"
    "print(json.dumps({'rc': child.returncode, 'total': total, 'first_score': first, 'layers': len(lines),\n"
    "                  'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def token_count(model: str, data: Path) -> int:
    """The rows' tokens, special ones included, under the model's tokenizer."""
    from probe.pipeline.context import resolve_model
    from probe.pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(resolve_model(model, None))
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"])


def run_probe(model: str, data: Path, folder: Path) -> dict:
    config = folder / "scale.yaml"
    config.write_text(json.dumps({"name": "scale", "dataset": {"name": "file", "path": str(data)},
                                  "positions": ["target"], "controls": [], "reporters": ["json", "csv"]}))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE_DRIVER, str(config), model, str(folder / "cache"),
                           str(folder / "out")], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"probe run failed:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {**found, "total": time.perf_counter() - start}


def run_script(model: str, data: Path) -> dict:
    command = [sys.executable, "-u", str(HERE / "plain_script.py"), "--model", model, "--data", str(data)]
    done = subprocess.run([sys.executable, "-c", SCRIPT_DRIVER, *command], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if found["rc"]:
        raise SystemExit("the plain script failed")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--skip-script", action="store_true", help="time probe only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="probe-scale-") as folder:
        data = synthetic.write(Path(folder) / "rows.jsonl", args.rows)
        tokens = token_count(args.model, data)
        print(f"{args.rows} rows, {tokens} tokens ({args.model})", flush=True)
        probe = run_probe(args.model, data, Path(folder))
        phases = probe["timings"]
        print(f"probe:  extract {tokens / phases['extract']:7.0f} tokens/s ({phases['extract']:.1f} s)  "
              f"fits {probe['layers'] * 5 / phases['probe']:6.2f}/s ({phases['probe']:.1f} s)  "
              f"total {probe['total']:.1f} s  peak RSS {probe['peak_kib'] / 1024:.0f} MiB  "
              f"phases {json.dumps({k: round(v, 1) for k, v in phases.items()})}", flush=True)
        if args.skip_script:
            return
        script = run_script(args.model, data)
        extract, fits = script["first_score"], script["total"] - script["first_score"]
        print(f"script: extract {tokens / extract:7.0f} tokens/s (≤ {extract:.1f} s, its first score included)  "
              f"fits {(script['layers'] - 1) * 5 / fits:6.2f}/s ({fits:.1f} s after its first score)  "
              f"total {script['total']:.1f} s  peak RSS {script['peak_kib'] / 1024:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
