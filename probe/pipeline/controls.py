"""The controls that go beyond one shuffled-label fit, wired into an experiment's probe fits: the
permutation test (probe/permutation.py) and the Hewitt–Liang control task (probe/control_tasks.py). Both
reuse each subset's folds and run as ordinary FitTasks, so they share the probes' joblib pool and cache."""

from __future__ import annotations

from probe.pipeline.config import ConfigError, plugin_options
from probe.pipeline.context import column
from probe.science import control_tasks, permutation


def tasks(config, rows, features, splits, layers: list[int]) -> list:
    """The FitTasks of the config's stronger controls, for every subset × position × layer."""
    wanted_permutation = permutation.CONTROL in config.controls
    wanted_control_task = control_tasks.CONTROL in config.controls
    if not (wanted_permutation or wanted_control_task):
        return []
    store = features.main
    groups = column(rows.table, "group")
    control_labels = _control_plan(config, rows, splits) if wanted_control_task else {}
    found = []
    for split in splits:
        permuted = (permutation.within_group_permutations(split.y, [groups[i] for i in split.index],
                                                          config.permutations, config.seed)
                    if wanted_permutation else [])
        for position in config.positions:
            for layer in layers:
                X = store.rows(position, layer, split.index)
                key = (split.name, position, layer)
                found += permutation.tasks(key, X, permuted, split.folds)
                if split.name in control_labels:
                    found += control_tasks.tasks(key, X, control_labels[split.name], split.folds)
    return found


def check(config, rows, splits) -> None:
    """Fail before any model work when the data can't carry a requested control."""
    if control_tasks.CONTROL in config.controls:
        _control_plan(config, rows, splits)


def _control_plan(config, rows, splits) -> dict:
    try:
        return control_tasks.plan(rows.table, config, splits, control_draw(config, rows))
    except control_tasks.ControlTaskError as error:
        raise ConfigError(f"{config.source or 'config'}: field 'controls' asks for control_task, "
                          f"but {error}") from None


def control_draw(config, rows) -> str:
    """How the control task draws each word type's label: ``options.control_task.draw`` when given, else
    ``empirical`` for a token task's rows (Hewitt & Liang's POS control) and ``balanced`` for a sense task."""
    from probe.pipeline.words import is_token_task

    draw = plugin_options(config, control_tasks.CONTROL, ("draw",)).get("draw")
    if draw is None:
        return "empirical" if is_token_task(rows.table) else "balanced"
    if draw not in control_tasks.DRAWS:
        raise ConfigError(f"{config.source or 'config'}: options.control_task.draw is {draw!r}; accepted: "
                          f"{', '.join(control_tasks.DRAWS)}")
    return draw


def fill(row, config, scores: dict, key: tuple) -> None:
    """Set the row's stronger-control fields from the scores of their tasks."""
    if permutation.CONTROL in config.controls:
        permutation.fill(row, scores, key, config.permutations)
    if (*key, control_tasks.CONTROL) in scores:
        control_tasks.fill(row, scores, key)
