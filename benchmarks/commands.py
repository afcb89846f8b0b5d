"""How long the commands that only list or read take, each in a fresh process (docs/benchmarks.md quotes this):

    .venv/bin/python benchmarks/commands.py [--runs 5] [--run RUN_DIR] [--against DIR]

Times `probe --help`, `probe plugins`, `probe cache` (a cache with a converted model listed),
`probe architectures` and `probe report RUN` (RUN: a finished run with report_data.json; without --run, one
is made first, untimed, from experiments/mole.yaml on minilm-l6). Each command runs --runs times after one
warm-up, twice over: with the installed plugins as they are, and with tests/installed_plugins/heavy_top on
PYTHONPATH too (an entry-point plugin that imports scikit-learn at the top of its module). Prints the median
wall time in seconds, and which of torch, transformers, datasets, sklearn, pandas and plotly the command
imported. --against DIR: also time the probe found in DIR (another checkout, e.g. `git archive main | tar
-x -C DIR` with DIR/probe_plugins a link to DIR/plugins), each command right after this one's, and print the
ratio DIR ÷ this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY_PLUGIN = ROOT / "tests" / "installed_plugins" / "heavy_top"
HEAVY_MODULES = ("torch", "transformers", "datasets", "sklearn", "pandas", "plotly")
# Runs the console script's main(), says on stderr's last line which heavy modules it imported, exits as it did.
PROBE = ("import sys\nfrom probe.cli import main\nstatus = 0\ntry:\n    main(sys.argv[1:])\n"
         "except SystemExit as stop:\n    status = stop.code\n"
         "sys.stderr.write('\\nimported: ' + ' '.join(m for m in {heavy!r} if m in sys.modules) + '\\n')\n"
         "sys.exit(status)\n")


def commands(run_dir: Path, cache_dir: Path) -> dict[str, list[str]]:
    return {
        "probe --help": ["--help"],
        "probe plugins": ["plugins"],
        "probe cache": ["cache", "--cache-dir", str(cache_dir)],
        "probe architectures": ["architectures"],
        "probe report RUN": ["report", str(run_dir), "--output", str(cache_dir.parent / "report.html")],
    }


def timed(args: list[str], env: dict[str, str], runs: int) -> tuple[float, str]:
    """Median wall time of ``runs`` fresh processes after one warm-up, and what the last one imported."""
    code = PROBE.format(heavy=HEAVY_MODULES)
    times, imported = [], ""
    for n in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                              check=False, cwd=tempfile.gettempdir())
        if done.returncode != 0:  # a failing command would be timed as if it had answered
            raise SystemExit(f"probe {' '.join(args)} failed:\n{done.stderr}")
        if n:
            times.append(time.perf_counter() - start)
        imported = done.stderr.rstrip().rpartition("imported:")[2].strip()
    return statistics.median(times), imported or "none"


def made_run(folder: Path) -> Path:
    """A finished run with report.html's data, from the mole experiment on the offline minilm-l6 model."""
    run_dir = folder / "run"
    subprocess.run([sys.executable, "-m", "probe.cli", "run", str(ROOT / "experiments" / "mole.yaml"),
                    "--model", "minilm-l6", "--output", str(run_dir), "--cache-dir", str(folder / "run-cache"),
                    "--set", "reporters=[json, html]", "--quiet"], check=True, capture_output=True)
    return run_dir


def listed_cache(folder: Path) -> Path:
    """A cache with a part of each kind and one converted model (what makes `probe cache` read models)."""
    cache = folder / "cache"
    for part in ("features", "probes", "figures"):
        (cache / part / "entry").mkdir(parents=True)
        (cache / part / "entry" / "data.bin").write_bytes(b"\0" * 1000)
    converted = cache / "models" / "model-0123456789abcdef0123"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    return cache


def environments(first: list[str]) -> dict[str, dict[str, str]]:
    """The commands' environments: the plugins as installed, and with the plugin that imports sklearn."""
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {"as installed": {**os.environ, "PYTHONPATH": os.pathsep.join(first + inherited)},
            "+ sklearn plugin": {**os.environ, "PYTHONPATH": os.pathsep.join(first + [str(HEAVY_PLUGIN)] + inherited)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--run", type=Path, help="A finished run folder (results.json, report_data.json).")
    parser.add_argument("--against", type=Path, help="Another checkout of probe to time beside this one.")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probe-commands-"))
    try:
        run_dir = options.run or made_run(folder)
        cache_dir = listed_cache(folder)
        versions = {"this": environments([])}
        if options.against:
            versions["against"] = environments([str(options.against.resolve())])
        print(f"median of {options.runs} fresh processes after a warm-up, seconds; python "
              f"{sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        for name, args in commands(run_dir, cache_dir).items():
            for plugins, env in versions["this"].items():
                seconds, imported = timed(args, env, options.runs)
                line = f"{name:<20} {plugins:<17} {seconds:6.2f} s  imports: {imported}"
                if options.against:
                    before, imported_before = timed(args, versions["against"][plugins], options.runs)
                    line += f"  | against: {before:6.2f} s ({before / seconds:.1f}x), imports: {imported_before}"
                print(line, flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
