"""Running a sweep's cells: each in a local worker process (``--jobs``), or as Ray tasks (``--ray``).

A cell's outcome is a small picklable record; a cell that fails is reported, and the others still run.
Workers share the content-addressed feature cache (its chunks are written atomically), so two cells on
one model and one dataset extract once when they run one after the other, and harmlessly twice when not.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from probe.sweep.plan import Cell, is_finished, mark_finished


@dataclass(frozen=True)
class CellSettings:
    """What every cell of one sweep shares (all absolute paths, so a Ray worker elsewhere reads them)."""

    cache_dir: Path
    threads: int = 1  # torch threads and parallel probe fits per cell
    tracking: str | None = None  # MLflow tracking URI
    sweep_name: str = "sweep"
    plugins_dir: Path | None = None
    progress_every: float | None = 10.0  # seconds between a cell's progress lines; None: no lines


@dataclass(frozen=True)
class Outcome:
    cell: str
    status: str  # "ran", "skipped" (finished before) or "failed"
    seconds: float = 0.0
    error: str = ""


def run_cell(cell: Cell, settings: CellSettings) -> Outcome:
    """Run one cell unless it is finished; log it to the tracker. Never raises: a failure is an Outcome."""
    if is_finished(cell):
        return Outcome(cell.name, "skipped")
    start = perf_counter()
    try:
        _prepare_worker(settings)
        from probe.pipeline.run import run_experiment

        with cell_progress(cell.name, settings.progress_every) as progress:
            results = run_experiment(cell.config, cell.run_dir, cache_dir=settings.cache_dir, progress=progress,
                                     n_jobs=settings.threads)
        seconds = perf_counter() - start
        if settings.tracking:
            from probe.sweep.tracking import log_cell

            log_cell(settings.tracking, settings.sweep_name, cell, results)
        mark_finished(cell, seconds)  # last: a cell whose tracking failed runs again next time
    except Exception as error:  # noqa: BLE001 - one cell's failure, whatever it is, must not stop the sweep
        return Outcome(cell.name, "failed", perf_counter() - start, _describe(error))
    return Outcome(cell.name, "ran", seconds)


@contextmanager
def cell_progress(cell: str, every: float | None) -> Iterator[bool]:
    """While a cell runs, its progress as lines on stderr: ``[cell] phase: done/total rows`` (or fits), at
    most one a phase every ``every`` seconds, and when a phase ends. The run's own progress bars are
    turned into these lines (they write to ``sys.stderr``, taken over for the cell's run), so that cells
    running side by side do not overwrite each other's bars. Yields the ``progress`` to run with."""
    if every is None:
        yield False
        return
    console, lines = sys.stderr, ProgressLines(cell, sys.stderr, every)
    sys.stderr = lines
    try:
        yield True
    finally:
        sys.stderr = console


class ProgressLines(io.TextIOBase):
    """A stream that reads progress-bar frames (``desc: 40%|███ | 400/1000 [...]``, one per carriage return)
    and writes ``[cell] phase: 400/1000 rows`` lines to ``console``; anything else passes through."""

    FRAME = re.compile(r"(?P<desc>[^\r\n]*?):\s+\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")

    def __init__(self, cell: str, console, every: float, now: Callable[[], float] = perf_counter):
        self.cell, self.console, self.every, self.now = cell, console, every, now
        self.last: dict[str, tuple[float, int]] = {}  # phase → (when, rows) of its last line

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        frames = [frame for frame in re.split(r"[\r\n]", text) if frame.strip()]
        for frame in frames:
            found = self.FRAME.match(frame.strip())
            if found is None:
                self.console.write(frame + "\n")
                continue
            phase = found["desc"].rsplit(": ", 1)[-1] or "run"
            self._line(phase, int(found["done"]), int(found["total"]))
        return len(text)

    def _line(self, phase: str, done: int, total: int) -> None:
        when, said = self.last.get(phase, (None, -1))
        finished = done == total and said != total
        if done == said or not (finished or when is None or self.now() - when >= self.every):
            return
        unit = "fits" if phase == "probes" else "rows"
        self.console.write(f"[{self.cell}] {phase}: {done}/{total} {unit}\n")
        self.console.flush()
        self.last[phase] = (self.now(), done)

    def flush(self) -> None:
        self.console.flush()


def _prepare_worker(settings: CellSettings) -> None:
    import datasets
    import torch

    from probe import plugins
    from probe.report.console import quiet_progress_bars
    from probe.scale.arrow_memory import prefer_jemalloc

    quiet_progress_bars()
    datasets.disable_progress_bars()
    torch.set_num_threads(settings.threads)
    prefer_jemalloc()  # as `probe run` does: a cell owns its process
    if settings.plugins_dir:
        plugins.load_plugins_dir(settings.plugins_dir)


def _describe(error: Exception) -> str:
    """probe's own errors already say what is wrong and where; others get their type named; with --debug
    (PROBE_DEBUG=1) the traceback comes too."""
    import traceback

    from probe.errors import UserError, debugging

    if debugging():
        return "".join(traceback.format_exception(error))
    return str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------- backends


def threads_per_cell(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def run_local(cells: list[Cell], settings: CellSettings, jobs: int) -> Iterator[Outcome]:
    """Each cell in one of ``jobs`` worker processes. They fork from a server process that imported torch
    and probe once but never ran torch (so no thread pool is forked), and take this process's environment."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["probe.sweep.run", "probe.pipeline.run"])
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_adopt_environment,
                             initargs=(dict(os.environ), os.getpid())) as pool:
        futures = [pool.submit(run_cell, cell, settings) for cell in cells]
        for future in as_completed(futures):
            yield future.result()


def _adopt_environment(environment: dict[str, str], sweep_pid: int) -> None:
    """The fork server keeps the environment of its start; a worker takes the sweep's (PROBE_PLUGINS, …).
    A worker also ends soon after the sweep process dies (a kill -9; probe.scale.workers.end_with_parent):
    the fork server, its parent, stays as long as any worker does."""
    from probe import plugins
    from probe.scale.workers import end_with_parent

    end_with_parent(sweep_pid)
    os.environ.clear()
    os.environ.update(environment)
    plugins.reset_plugin_manager()


def run_ray(cells: list[Cell], settings: CellSettings, address: str) -> Iterator[Outcome]:
    """Each cell as a Ray task (one CPU each) on the cluster at ``address`` ("local": start one here).

    probe must be installed where the workers run, and the output and cache folders shared with them.
    A Ray instance this process already started (``ray.init``) is used as it is, and left running."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'probe[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=settings.threads)(run_cell_with)
        environment = _forwarded_environment()
        pending = [task.remote(environment, cell, settings) for cell in cells]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def run_cell_with(environment: dict[str, str], cell: Cell, settings: CellSettings) -> Outcome:
    """``run_cell`` in a Ray worker with the driver's ``environment`` set first. Not Ray's ``runtime_env``:
    its workers are started through a shell that splits a Python path with a space in it (a clone at
    "/tmp/my clone" never got a worker, and the sweep waited for ever)."""
    os.environ.update(environment)
    return run_cell(cell, settings)


def _forwarded_environment() -> dict[str, str]:
    """The settings that change what a worker loads (which plugins, offline mode) or says (--debug) travel
    with the tasks."""
    names = ("PROBE_PLUGINS", "PROBE_DEBUG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
             "HF_HOME")
    return {name: os.environ[name] for name in names if name in os.environ}


def run_cells(cells: list[Cell], settings: CellSettings, *, jobs: int = 1, ray_address: str | None = None,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Every cell, locally or on Ray; ``on_outcome`` hears of each as it ends. Finished cells are skipped
    here, without starting a worker."""
    finished = {cell.name for cell in cells if is_finished(cell)}
    todo = [cell for cell in cells if cell.name not in finished]
    outcomes = [Outcome(cell.name, "skipped") for cell in cells if cell.name in finished]
    for outcome in outcomes:
        if on_outcome:
            on_outcome(outcome)
    if todo:
        backend = run_ray(todo, settings, ray_address) if ray_address else run_local(todo, settings, jobs)
        for outcome in backend:
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
    order = {cell.name: n for n, cell in enumerate(cells)}
    return sorted(outcomes, key=lambda outcome: order[outcome.cell])
