"""Wall time of `probe run` per phase (import, load, extract, probe, report), cold and cached, against the
plain script a user would write (benchmarks/plain_script.py).

    python benchmarks/pipeline.py                       # make run's two commands, cold then cached
    python benchmarks/pipeline.py --models minilm-l6 --reruns 7   # cold against a cached rerun, one ratio
    python benchmarks/pipeline.py --models smollm2-135m --set 'controls=[]' --script --repeats 3
    python benchmarks/pipeline.py --models FOLDER --device cuda --script   # a checkpoint folder, on a GPU
    python benchmarks/pipeline.py --models minilm-l6 --ablation --repeats 3   # head ablation against mole

Each run is a fresh process. "cold" starts from an empty cache folder (so a GGUF checkpoint is converted
too); "features cold" keeps only the converted model (no vectors, predictions or patterns); "cached"
reruns on the full cache, answered from its index of finished runs (--reruns of them after each cold
run); "cached, computed" reruns with that index emptied (vectors, fits and figures still cached).
Phases: import (the command's start: imports, config), load (checks, rows, model config; and the model
itself when converted), extract, probe, report, exit (the process ending, from outside), total (from outside).
A rerun copied from the index runs no phase: only its total is timed.
Medians over --repeats (and the reruns); the machine's other load shows in the spread, so say how busy it
was. The ratio line compares the median cached rerun with the median cold run of the same invocation.
--ablation: instead, per repeat on an empty cache, a cold mole.yaml run and then mole-heads.yaml (the head
ablation sweep, reusing mole's vectors and fits) on the same cache, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "mole.yaml"
HEADS = ROOT / "experiments" / "mole-heads.yaml"


def one_run(model: str, cache: Path, out: Path, overrides: list[str], device: str, config: Path = CONFIG) -> dict:
    """`probe run CONFIG --model MODEL --set … --quiet` in a fresh process, through the console script's own
    entry (probe.cli.main); the phases from run_experiment's clock, the total (exit included) from outside."""
    driver = (  # probe.pipeline.run is patched once the command imports it: a copied run never does
        "import importlib, json, sys, time; start = time.perf_counter()\n"
        "command = importlib.import_module('probe.cli.main')  # probe.cli.main is also the function's name\n"
        "timings, computed = {}, command._computed\n"
        "def timed_computed(*args, **kwargs):\n"
        "    import probe.pipeline.run as experiment\n"
        "    real = experiment.run_experiment\n"
        "    def timed(*args, **kwargs):\n"
        "        timings['import'] = time.perf_counter() - start\n"
        "        return real(*args, **kwargs, timings=timings)\n"
        "    experiment.run_experiment = timed\n"
        "    return computed(*args, **kwargs)\n"
        "command._computed = timed_computed\n"
        "try:\n"
        "    command.main(sys.argv[1:])\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "print(json.dumps(timings))\n"
        "sys.exit(code)\n"
    )
    command = ["run", str(config), "--model", model, "--cache-dir", str(cache), "--output", str(out), "--quiet"]
    command += [arg for override in overrides for arg in ("--set", override)]
    command += ["--device", device]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", driver, *command], capture_output=True, text=True, cwd=ROOT)
    total = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    timings = json.loads(done.stdout.strip().splitlines()[-1])  # {} for a run copied from the index
    return {**timings, "exit": total - sum(timings.values()), "total": total} if timings else {"total": total}


def plain_script(model: str, device: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), "--model", model,
                    "--device", device], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def median_row(runs: list[dict]) -> dict:
    """Each phase's median over the runs that timed it."""
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: statistics.median(run[key] for run in runs if key in run) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm-l6", "smollm2-135m"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--reruns", type=int, default=3, help="cached reruns after each cold run")
    parser.add_argument("--script", action="store_true", help="also time benchmarks/plain_script.py")
    parser.add_argument("--device", default="cpu", help="probe's and the script's device (cpu, cuda, …)")
    parser.add_argument("--ablation", action="store_true", help="time mole-heads.yaml after a cold mole.yaml")
    args = parser.parse_args()
    if args.ablation:
        return ablation(args)

    rows, ratios = [], []
    for model in args.models:
        cold, features_cold, cached, computed, script = [], [], [], [], []
        for _ in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="probe-bench-"))
            try:
                cold.append(one_run(model, work / "cache", work / "out", args.overrides, args.device))
                for _ in range(args.reruns):
                    cached.append(one_run(model, work / "cache", work / "out", args.overrides, args.device))
                shutil.rmtree(work / "cache" / "runs", ignore_errors=True)  # the finished runs' index only
                computed.append(one_run(model, work / "cache", work / "out", args.overrides, args.device))
                for kept in (work / "cache").iterdir():  # all but the converted model
                    if kept.name != "models":
                        shutil.rmtree(kept)
                features_cold.append(one_run(model, work / "cache", work / "out", args.overrides, args.device))
                if args.script:
                    script.append(plain_script(model, args.device))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        for name, runs in (("cold", cold), ("features cold", features_cold), ("cached", cached),
                           ("cached, computed", computed)):
            rows.append({"model": model, "run": name, **median_row(runs)})
        ratios.append(f"{model}: cached ÷ cold = {median_row(cached)['total'] / median_row(cold)['total']:.3f} "
                      f"({len(cached)} reruns, {len(cold)} cold); cached, computed ÷ cold = "
                      f"{median_row(computed)['total'] / median_row(cold)['total']:.3f}")
        if script:
            rows.append({"model": model, "run": "plain script", "total": statistics.median(script)})

    phases = ["import", "load", "extract", "probe", "report", "exit", "total"]
    print(f"| model | run | {' | '.join(phases)} |")
    print("|---|---|" + "---|" * len(phases))
    for row in rows:
        cells = [f"{row[p]:.1f}" if p in row else "" for p in phases]
        print(f"| {row['model']} | {row['run']} | {' | '.join(cells)} |")
    print(f"\nmedians of {args.repeats} run(s), cached: of {args.repeats * args.reruns}, seconds; overrides: "
          f"{args.overrides or 'none'}; device: {args.device}")
    print("\n".join(ratios))


def ablation(args) -> None:
    """mole.yaml cold, then mole-heads.yaml on its cache, per repeat; medians and the median ratio."""
    print("| model | mole.yaml cold | mole-heads.yaml after it | ratio |")
    print("|---|---|---|---|")
    for model in args.models:
        plain, heads, ratios = [], [], []
        for _ in range(args.repeats):
            work = Path(tempfile.mkdtemp(prefix="probe-bench-"))
            try:
                plain.append(one_run(model, work / "cache", work / "mole", args.overrides, args.device)["total"])
                heads.append(one_run(model, work / "cache", work / "heads", args.overrides, args.device,
                                     HEADS)["total"])
            finally:
                shutil.rmtree(work, ignore_errors=True)
            ratios.append(heads[-1] / plain[-1])
            print(f"repeat {len(ratios)}: mole {plain[-1]:.1f} s, heads {heads[-1]:.1f} s, ratio {ratios[-1]:.2f}",
                  flush=True)
        print(f"| {model} | {statistics.median(plain):.1f} | {statistics.median(heads):.1f} | "
              f"{statistics.median(ratios):.2f} |")
        print(f"\nper repeat (s): mole {[round(t, 1) for t in plain]}, heads {[round(t, 1) for t in heads]}")
    print(f"\nmedians of {args.repeats} run(s), seconds; overrides: {args.overrides or 'none'}; device: {args.device}")


if __name__ == "__main__":
    main()
