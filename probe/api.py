"""The Python API: ``probe.run(config_or_path, **overrides) -> Results``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe.config import ExperimentConfig, load_config, validate
from probe.context import DEFAULT_CACHE
from probe.results import Results


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
    from probe.experiment import run_experiment

    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif isinstance(config, dict):
        config = validate({**config, **overrides})
    elif overrides:
        config = validate({**config.settings(), **overrides}, source=config.source)
    output = Path(output) if output is not None else Path("runs") / config.name
    return run_experiment(config, output, cache_dir=cache_dir, progress=progress, n_jobs=n_jobs)
