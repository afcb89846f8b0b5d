"""probe's CoarseWSD-20 study against the plain transformers + scikit-learn script (benchmarks/coarsewsd_plain.py),
cold, on a synthetic folder in the benchmark's format (benchmarks/coarsewsd_synthetic.py): the wall time of
each, their ratio, and whether every word's chosen layer and accuracies agree within one test row.

    python benchmarks/coarsewsd.py --model minilm-l6 --fraction 0.1 --repeats 3 [--device cpu]

Each repeat runs, in fresh processes, `probe run` (experiments/coarsewsd.yaml's settings, reporters json and
study) on an empty cache folder, then the plain script; the order alternates between repeats so that the
machine's other load falls on both. Prints each time, the medians with their range, probe's median time per
phase (as benchmarks/pipeline.py times them), and the ratio of the medians; ``--probe-only`` times probe's
phases alone. The text is synthetic: the numbers are about speed and agreement, not about the model.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from coarsewsd_synthetic import write_folder  # noqa: E402
from pipeline import one_run  # noqa: E402  (`probe run` in a fresh process, timed by phase)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    return time.perf_counter() - start


def probe_cold(config: Path, model: str, work: Path, n: int, device: str, phases: list[dict]) -> float:
    """`probe run` on an empty cache folder; its phases (import, load, extract, probe, report, exit) kept."""
    timings = one_run(model, work / f"cache{n}", work / f"probe{n}", [], device, config=config)
    phases.append(timings)
    return timings["total"]


def script_cold(folder: Path, model: str, work: Path, n: int, device: str) -> float:
    return timed([sys.executable, str(ROOT / "benchmarks" / "coarsewsd_plain.py"), str(folder), "--model", model,
                  "--device", device, "--out", str(work / f"script{n}.csv")])


def agreement(probe_csv: Path, script_csv: Path) -> list[str]:
    """Words whose layer differs or whose accuracy (probe or centroid) differs by more than one test row."""
    mine = {row["subset"]: row for row in csv.DictReader(probe_csv.read_text().splitlines())}
    problems = []
    for theirs in csv.DictReader(script_csv.read_text().splitlines()):
        word, row = theirs["word"], mine[theirs["word"]]
        one_row = 1 / int(theirs["test_rows"]) + 1e-9
        if row["layer"] == "":
            problems.append(f"{word}: no layer chosen by probe (a sense has fewer than 3 training rows, too few "
                            "for 3 inner folds); the script chose one regardless")
            continue
        if row["layer"] != theirs["layer"]:
            problems.append(f"{word}: layer {row['layer']} (probe) vs {theirs['layer']} (script)")
        for column in ("accuracy", "centroid_accuracy"):
            if abs(float(row[column]) - float(theirs[column])) > one_row:
                problems.append(f"{word}: {column} {float(row[column]):.4f} vs {float(theirs[column]):.4f}")
    return problems


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times):.1f} s (range {min(times):.1f}–{max(times):.1f}, n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the benchmark's 24k/10k rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe-only", action="store_true", help="time probe's phases alone, not the script")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coarsewsd-bench-"))
    folder = work / "CoarseWSD-20"
    sizes = write_folder(folder, args.fraction)
    print(f"synthetic CoarseWSD-20 at {args.fraction:g} of the scale: {sum(n for n, _ in sizes.values())} train, "
          f"{sum(n for _, n in sizes.values())} test sentences, {len(sizes)} words; model {args.model}, {args.device}")
    config = yaml.safe_load((ROOT / "experiments" / "coarsewsd.yaml").read_text())
    config.update(name="coarsewsd-bench", model=args.model, reporters=["json", "study"],
                  dataset={"name": "coarsewsd", "path": str(folder)})
    config_path = work / "coarsewsd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    probe_times, script_times, phases = [], [], []
    for n in range(args.repeats):
        steps = [("probe", lambda n=n: probe_cold(config_path, args.model, work, n, args.device, phases), probe_times),
                 ("script", lambda n=n: script_cold(folder, args.model, work, n, args.device), script_times)]
        steps = steps[:1] if args.probe_only else steps if n % 2 == 0 else steps[::-1]
        for name, run, times in steps:
            times.append(run())
            print(f"repeat {n + 1}: {name} {times[-1]:.1f} s", flush=True)
    print(f"probe run, cold: {spread(probe_times)}")
    print("  by phase: " + ", ".join(f"{phase} {statistics.median(t[phase] for t in phases):.1f} s"
                                     for phase in phases[0] if phase != "total"))
    if args.probe_only:
        return
    print(f"plain script, cold: {spread(script_times)}")
    print(f"ratio of medians (probe / script): {statistics.median(probe_times) / statistics.median(script_times):.2f}")
    problems = agreement(work / "probe0" / "study.csv", work / "script0.csv")
    print("per-word layer and accuracies agree within one test row" + (
        ", except:\n  " + "\n  ".join(problems) if problems else ""))
    print((work / "probe0" / "study.md").read_text())


if __name__ == "__main__":
    main()
