"""The Python API: ``probe.run(config_or_path, **overrides) -> Results``, and swapping a model's attention
with the registered adapters (a plugin's asked before probe's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe.pipeline.config import ExperimentConfig, load_config, validate
from probe.pipeline.context import DEFAULT_CACHE
from probe.pipeline.results import Results
from probe.store.files import default_output


def run(
    config: str | Path | dict | ExperimentConfig,
    *,
    output: str | Path | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
    progress: bool = False,
    n_jobs: int | None = None,
    **overrides: Any,
) -> Results:
    """Run an experiment — a YAML path, a dict of fields or an ExperimentConfig — with any field overridden
    by keyword (``probe.run("experiments/mole.yaml", model="minilm-l6", folds=3)``); reports go to
    ``output`` (default runs/NAME). Returns the typed Results."""
    from probe.notebook import register_display
    from probe.pipeline.run import run_experiment

    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif isinstance(config, dict):
        config = validate({**config, **overrides})
    elif overrides:
        config = validate({**config.settings(), **overrides}, source=config.source)
    output = Path(output) if output is not None else default_output(config.name)
    register_display()
    return run_experiment(config, output, cache_dir=cache_dir, progress=progress, n_jobs=n_jobs)


def swap_attention(model, fast: bool = False):
    """Replace every attention module of ``model`` with probe's reimplementation, by the adapter the
    ``probe_adapter`` hook chooses (plugins asked first, probe's built-ins last); parameters are shared,
    not copied. ``fast``: see ``probe.set_fast_attention``. Returns the model, swapped in place."""
    from probe import plugins
    from probe.core import swap

    return swap.swap_attention(model, fast=fast, adapters=plugins.adapters_for(model))


def swapped_attention(model):
    """``with probe.swapped_attention(model): ...`` runs the block on probe's attention, then restores."""
    from probe import plugins
    from probe.core import swap

    return swap.swapped_attention(model, adapters=plugins.adapters_for(model))


def load_results(run_dir) -> Results:
    """The Results a run wrote to ``run_dir/results.json`` (or that file itself); shown as its report in
    a notebook cell."""
    from probe.notebook import register_display
    from probe.pipeline import results

    register_display()
    return results.load_results(run_dir)
