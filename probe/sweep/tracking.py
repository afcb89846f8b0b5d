"""Logging a sweep cell to MLflow (optional extra ``probe[mlflow]``): one MLflow run per cell, in an MLflow
experiment named after the sweep.

- params: every setting of the cell's config, plus its experiment, model and seed;
- metrics: per layer (``step`` = the layer), named ``{position}/{subset}/{metric}`` — accuracy, macro_f1,
  the controls and each extra metric; and ``best/{position}/{subset}/accuracy`` and ``…/layer``;
- tags: probe's version and git commit; artifacts: the whole run folder.
"""

from __future__ import annotations

import json
from time import time

from probe.sweep.plan import Cell

BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch call
PARAM_LENGTH = 6000  # MLflow's longest param value


def _client_class():
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise RuntimeError("MLflow tracking needs MLflow: pip install 'probe[mlflow]'") from None
    return MlflowClient


def client(uri: str):
    return _client_class()(tracking_uri=uri)


def check_tracking(uri: str, experiment_name: str) -> None:
    """Fail now, before any cell runs, when MLflow is missing or the tracking store can't be opened; and
    create the sweep's experiment here, once: cells running in parallel would race to create it (a file
    store then holds two experiments of one name, each with some of the runs)."""
    make_client = _client_class()
    from mlflow.exceptions import MlflowException

    try:
        tracker = make_client(tracking_uri=uri)
        tracker.search_experiments(max_results=1)
        _experiment_id(tracker, experiment_name)
    except (MlflowException, OSError) as error:
        raise RuntimeError(f"MLflow tracking URI {uri!r}: {error}") from None


def log_cell(uri: str, experiment_name: str, cell: Cell, results) -> str:
    """Log one finished cell; returns the MLflow run id."""
    from mlflow.entities import Metric, Param

    tracker = client(uri)
    experiment_id = _experiment_id(tracker, experiment_name)
    run = tracker.create_run(experiment_id, run_name=cell.name, tags=_tags(results))
    run_id = run.info.run_id
    params = [Param(key, value) for key, value in cell_params(cell).items()]
    now = int(time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in layer_metrics(results)]
    for start in range(0, len(params), BATCH):
        tracker.log_batch(run_id, params=params[start:start + BATCH])
    for start in range(0, len(metrics), 10 * BATCH):
        tracker.log_batch(run_id, metrics=metrics[start:start + 10 * BATCH])
    tracker.log_artifacts(run_id, str(cell.run_dir))
    tracker.set_terminated(run_id)
    return run_id


def _experiment_id(client, name: str) -> str:
    """The MLflow experiment's id, creating it (check_tracking has, before the cells run)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def _tags(results) -> dict[str, str]:
    provenance = results.provenance
    tags = {"probe.version": results.versions.get("probe", ""), "probe.experiment": results.experiment}
    if provenance and provenance.git_commit:
        tags["probe.git_commit"] = provenance.git_commit
    return tags


def cell_params(cell: Cell) -> dict[str, str]:
    """The cell's settings as MLflow params: strings, lists and mappings as JSON."""
    params = {"cell": cell.name, "experiment": cell.experiment}
    for key, value in cell.config.settings().items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[key] = text[:PARAM_LENGTH]
    return params


def layer_metrics(results) -> list[tuple[str, float, int]]:
    """(name, value, step = layer) for every numeric column of the tidy table (results.layers: scores,
    controls, extra metrics, measures), then each series' best layer (step 0)."""
    from probe.pipeline.results import table_record

    logged = []
    best_rows = results.best_rows()
    for (position, subset), rows in results.series().items():
        prefix = f"{position}/{subset}"
        for row in rows:
            values = {name: value for name, value in table_record(row).items()
                      if name not in ("layer", "position", "subset") and isinstance(value, (int, float))}
            logged += [(f"{prefix}/{name}", float(v), row.layer) for name, v in values.items()]
        best = best_rows[(position, subset)]
        logged += [(f"best/{prefix}/accuracy", best.accuracy, 0), (f"best/{prefix}/layer", float(best.layer), 0)]
    return logged
