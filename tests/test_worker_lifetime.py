"""Worker processes end when their parent dies: kill -9 of `probe run --jobs 2` (loky's fit workers) or of
`probe sweep --jobs 2` (the fork server and the cells) leaves no process behind.

Each run hangs in a reporter plugin after its fits, so the workers exist and the parent is alive when the
test kills it; then it polls /proc until every process the parent had started is gone (a liveness check
with a generous bound, not a measure of speed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tiny_gpt2 import build_tiny_gpt2

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")

ROOT = Path(__file__).resolve().parent.parent
MOLE = ROOT / "probe" / "builtin" / "data" / "mole.jsonl"

HANG_REPORTER = """
    import os, time
    from pathlib import Path
    from probe.hookspecs import hookimpl

    def hang(results, output_dir, context):
        (Path({markers!r}) / str(os.getpid())).write_text("reporting")
        time.sleep(600)

    @hookimpl
    def register_reporters(register):
        register("hang", hang)
"""


def _processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid → (parent pid, state); zombies (ended, not yet reaped) are left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            found[int(entry.name)] = (int(ppid), state)
    return found


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"still waiting after {seconds} s for {what}")


@pytest.fixture
def hanging_experiment(tmp_path):
    """A tiny model, mole rows and a config whose last reporter never returns (it leaves a marker file)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    plugin = tmp_path / "hang.py"
    plugin.write_text(textwrap.dedent(HANG_REPORTER.format(markers=str(markers))))
    model = build_tiny_gpt2(tmp_path / "model", n_layer=2, n_embd=32, seed=3)
    rows = [json.loads(line) for line in MOLE.read_text().splitlines() if line.strip()]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "hang.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
        "controls": ["majority"], "reporters": ["json", "hang"], "plugins": [str(plugin)], "batch_size": 8}))
    return config, markers


def _kill_and_expect_no_orphans(process: subprocess.Popen, markers: Path, reporting: int) -> None:
    _wait_for(lambda: len(list(markers.iterdir())) >= reporting or process.poll() is not None, 300,
              "the run to reach its reporter")
    assert process.poll() is None, process.communicate()[1][-3000:]
    workers = _descendants(process.pid)
    assert workers, "the run started no worker processes"
    process.send_signal(signal.SIGKILL)
    process.wait()
    try:
        _wait_for(lambda: not (workers & set(_processes())), 60, "the workers to end after their parent's kill -9")
    finally:  # a failure leaves nothing running either
        for pid in workers & set(_processes()):
            os.kill(pid, signal.SIGKILL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    environ = {**os.environ, "PROBE_PLUGINS": ""}
    return subprocess.Popen([sys.executable, "-m", "probe.cli", *args], cwd=cwd, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_9_of_a_run_ends_its_fit_workers(hanging_experiment, tmp_path):
    config, markers = hanging_experiment
    process = _start(["run", str(config), "--output", str(tmp_path / "out"), "--cache-dir",
                      str(tmp_path / "cache"), "--quiet", "--jobs", "2"], tmp_path)
    try:
        _kill_and_expect_no_orphans(process, markers, reporting=1)
    finally:
        if process.poll() is None:
            process.kill()


def test_kill_9_of_a_sweep_ends_its_cells(hanging_experiment, tmp_path):
    config, markers = hanging_experiment
    process = _start(["sweep", str(config), "--seed", "0", "--seed", "1", "--jobs", "2", "--output",
                      str(tmp_path / "sweep"), "--cache-dir", str(tmp_path / "cache")], tmp_path)
    try:
        _kill_and_expect_no_orphans(process, markers, reporting=2)
    finally:
        if process.poll() is None:
            process.kill()
