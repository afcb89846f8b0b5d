"""What a run's labels are: classes (``task: classification``, probes such as logreg, scored by accuracy) or
numbers (``task: regression``, probes such as ridge, scored by R² and Spearman's correlation).

A config may say ``task`` outright; without it the probe decides: a scikit-learn regressor (``ridge``, or a
plugin's) makes a regression run. ``resolved`` fills the field in and puts the regression baseline
(``mean``, predicting each training part's mean) where the default controls name ``majority``; a config
whose task, probe, labels or controls disagree is a ConfigError that says what to write.
"""

from __future__ import annotations

from probe.pipeline.config import ConfigError, ExperimentConfig

CLASSIFICATION, REGRESSION = "classification", "regression"
RIDGE_EXAMPLE = "probe: {name: ridge, alpha: 1.0}"
# What a regression run can't do yet, with the reason given to the person whose config asks for it.
CLASSIFICATION_ONLY_CONTROLS = {
    "majority": "majority predicts the most frequent class; numbers get the mean predictor: write mean",
    "permutation": "the permutation test compares accuracies; it is not implemented for regression yet",
    "control_task": "the Hewitt–Liang control task reassigns classes; numbers have none",
}


def probe_is_regressor(config: ExperimentConfig) -> bool:
    """Whether the config's probe predicts numbers (scikit-learn's ``is_regressor`` on a fresh one)."""
    from sklearn.base import is_regressor

    from probe.pipeline.context import probe_factory

    try:
        return bool(is_regressor(probe_factory(config)()))
    except Exception:  # a probe that can't be built: check_probe_fits reports it with its options
        return False


def is_regression(config: ExperimentConfig) -> bool:
    """Whether a config that went through ``resolved`` is a regression run (an unresolved one: classes)."""
    return config.task == REGRESSION


def resolved(config: ExperimentConfig) -> ExperimentConfig:
    """A regression config with ``task`` filled in and its controls fitting numbers (a copy); a
    classification config as it is. A disagreement between task, probe and controls is a ConfigError."""
    where = config.source or "config"
    regressor = probe_is_regressor(config)
    task = config.task or (REGRESSION if regressor else CLASSIFICATION)
    if task == REGRESSION and not regressor:
        raise ConfigError(f"{where}: field 'task' is regression, but probe {config.probe_name!r} predicts classes; "
                          f"write {RIDGE_EXAMPLE} (or another registered regressor)")
    if task == CLASSIFICATION and regressor:
        raise ConfigError(f"{where}: probe {config.probe_name!r} predicts numbers, but field 'task' is "
                          "classification; write task: regression for numeric labels, or probe: logreg for classes")
    if task == CLASSIFICATION:
        if "mean" in config.controls:
            raise ConfigError(f"{where}: field 'controls' names mean, the regression baseline; for classes write "
                              "majority")
        return config  # the same object: plugins' hooks are given the config they were handed
    return config.model_copy(update={"task": task, "controls": _regression_controls(config, where)})


def _regression_controls(config: ExperimentConfig, where: str) -> list[str]:
    written = "controls" in config.model_fields_set
    controls = list(config.controls)
    if not written and "majority" in controls:  # the default list: its baseline, for numbers
        controls[controls.index("majority")] = "mean"
    refused = [name for name in controls if name in CLASSIFICATION_ONLY_CONTROLS]
    if refused:
        raise ConfigError(f"{where}: field 'controls' names {refused[0]}, which a regression run can't use: "
                          f"{CLASSIFICATION_ONLY_CONTROLS[refused[0]]}")
    _refuse_unsupported(config, where)
    return controls


def _refuse_unsupported(config: ExperimentConfig, where: str) -> None:
    """The settings a regression run does not support yet, each with what to write instead."""
    from probe.pipeline.evaluation import FixedSplit

    if isinstance(config.protocol, FixedSplit):
        raise ConfigError(f"{where}: field 'evaluation': a fixed split is not implemented for regression yet; "
                          "use cross-validation (evaluation: {cv: 5})")
    if isinstance(config.evaluation.cv, str) and config.evaluation.cv.startswith("Stratified"):
        raise ConfigError(f"{where}: field 'evaluation': {config.evaluation.cv} stratifies by class, and numbers "
                          "have none; write cv: KFold (or GroupKFold), or leave cv out")
    if config.attention == "both":
        raise ConfigError(f"{where}: field 'attention': both compares accuracies, which a regression run does not "
                          "have; write reimplemented or reference")
    if config.measures:
        raise ConfigError(f"{where}: field 'measures': {config.measures[0]} measures classification probes; "
                          "leave measures out for regression")


# ---------------------------------------------------------------- the labels, as numbers


def check_labels(config: ExperimentConfig, labels, numbers) -> None:
    """Labels that fit no task of this (resolved) config's kind: text for a regressor, fractional numbers for
    a classifier. ``numbers``: each label's row number in its source, for the message."""
    from probe.pipeline.data import as_number  # the datasets library: imported when rows are loaded

    where = config.source or "config"
    values = [as_number(label) for label in labels]
    if not values:
        return
    if is_regression(config) and all(value is None for value in values):
        raise ConfigError(f"{where}: probe {config.probe_name!r} predicts numbers, but the labels are text (row "
                          f"{numbers[0]}: {labels[0]!r}); give each row a numeric label, or write probe: logreg "
                          "to predict classes")
    if not is_regression(config) and all(value is not None for value in values):
        fractional = next((i for i, value in enumerate(values) if not value.is_integer()), None)
        if fractional is not None:
            raise ConfigError(f"{where}: the labels are numbers (row {numbers[fractional]}: {labels[fractional]!r}) "
                              f"but probe {config.probe_name!r} predicts classes; write {RIDGE_EXAMPLE} to "
                              "predict them, or give the classes as words")
