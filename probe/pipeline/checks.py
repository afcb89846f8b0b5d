"""Everything a run can check before any model work, each failure a ConfigError (or PluginError for a name
no plugin registers) that names the field and what it accepts.

``check_config`` needs only the config and the folders; ``check_layers`` the model's depth (read from its
config.json); ``check_rows`` the prepared rows; ``check_architecture`` builds the model on the meta device
(no weights) to ask whether probe can swap its attention.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
import warnings
from pathlib import Path

import numpy as np

from probe import plugins
from probe.pipeline.config import ConfigError, ExperimentConfig
from probe.store.files import is_replaceable


def check_config(config: ExperimentConfig, output_dir: Path, cache_dir: Path) -> None:
    where = f"{config.source or 'config'}:"
    _named(config, "reporter", "reporters", config.reporters)
    _named(config, "metric", "metrics", config.metrics or [])
    dataset = _named(config, "dataset", "dataset", [config.dataset_name])[0]
    check_options(where, "dataset", config.dataset_name, dataset.value, config.dataset_options)
    probe = _named(config, "probe", "probe", [config.probe_name])[0]
    check_options(where, "probe", config.probe_name, probe.value, config.probe_options, fixed=("seed",))
    check_probe_fits(config)
    check_folder(output_dir, "output folder", "--output")
    check_folder(cache_dir, "cache folder", "--cache-dir")
    if not is_replaceable(output_dir):
        listed = ", ".join(sorted(p.name for p in output_dir.iterdir())[:5])
        raise ConfigError(
            f"output folder {output_dir} holds files that are not a probe run ({listed}); a run replaces its "
            "output folder as a whole, so give --output a new folder or an earlier run's"
        )


def _named(config: ExperimentConfig, kind: str, field: str, names: list[str]) -> list[plugins.Registered]:
    """The registered entries ``names`` refer to; an unknown name is an error naming the config field."""
    entries = plugins.registry(kind)
    unknown = [name for name in names if name not in entries]
    if unknown:
        known = ", ".join(sorted(entries)) or "none"
        raise plugins.PluginError(
            f"{config.source or 'config'}: field {field!r} names {kind} {unknown[0]!r}, which no plugin "
            f"registers; known {kind}s: {known}"
        )
    return [entries[name] for name in names]


def check_options(where: str, field: str, name: str, fn, options: dict, fixed: tuple[str, ...] = ()) -> None:
    """The options of a dataset or probe mapping must be parameters of the function that takes them."""
    accepted, open_ended = accepted_options(fn)
    accepted = [a for a in accepted if a not in fixed]
    unknown = [key for key in options if key not in accepted]
    if unknown and not open_ended:
        listed = ", ".join(accepted) or "no options"
        raise ConfigError(f"{where} field {field!r}: {field} {name!r} has no option {unknown[0]!r}; it takes {listed}")
    missing = [p for p in required_options(fn) if p not in options and p not in fixed]
    if missing:
        raise ConfigError(f"{where} field {field!r}: {field} {name!r} needs option {missing[0]!r}, "
                          f"e.g. {field}: {{name: {name}, {missing[0]}: ...}}")


def accepted_options(fn) -> tuple[list[str], bool]:
    """(named parameters, whether it takes any other keyword). A function that passes ``**options`` on says
    where with a ``forwards_to = "module:function"`` attribute; then that function's parameters count."""
    parameters = inspect.signature(fn).parameters.values()
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        return named, False
    target = getattr(fn, "forwards_to", None)
    if target is None:
        return named, True
    module, _, attribute = target.partition(":")
    forwarded, open_ended = accepted_options(getattr(importlib.import_module(module), attribute))
    skip = set(getattr(fn, "forwards_skip", ()))
    return named + [n for n in forwarded if n not in named and n not in skip], open_ended


def required_options(fn) -> list[str]:
    parameters = inspect.signature(fn).parameters.values()
    return [p.name for p in parameters
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_probe_fits(config: ExperimentConfig) -> None:
    """Build the probe once with the config's options and fit it on eight made-up rows, so that a bad
    option (C: -1, max_iter: "x") stops the run now rather than after every layer is extracted."""
    from probe.pipeline.context import probe_factory

    where = f"{config.source or 'config'}: field 'probe'"
    try:
        estimator = probe_factory(config)()
    except Exception as error:
        raise ConfigError(f"{where}: {config.probe_name!r} can't be built with {config.probe_options}: "
                          f"{type(error).__name__}: {error}") from None
    from sklearn.base import is_regressor

    X = np.array([[0.0, 1.0], [1.0, 0.0]] * 4)
    y = np.array([0.5, 2.0] * 4) if is_regressor(estimator) else np.array(["a", "b"] * 4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(X, y)
    except Exception as error:
        raise ConfigError(f"{where}: {config.probe_name!r} with options {config.probe_options} can't be fitted: "
                          f"{type(error).__name__}: {error}") from None


def check_folder(folder: Path, what: str, option: str) -> None:
    """``folder`` exists as a writable folder, or can be created in one."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {folder}: {existing} is a file, not a folder; choose another with {option}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{what} {folder} can't be written ({error.strerror} in {existing}); "
                          f"choose another with {option}") from None


def check_layers(config: ExperimentConfig, n_blocks: int) -> list[int]:
    """The layers to probe: all of 0..n_blocks, or the config's, each of which must exist."""
    if config.layers == "all":
        return list(range(n_blocks + 1))
    beyond = [layer for layer in config.layers if layer > n_blocks]
    if beyond:
        raise ConfigError(
            f"{config.source or 'config'}: field 'layers' asks for layer {beyond[0]}, but {config.model} has "
            f"{n_blocks} blocks: layers 0 (the embeddings) to {n_blocks}"
        )
    return config.layers


def check_rows(config: ExperimentConfig, rows) -> None:
    where = f"{config.source or 'config'}:"
    if not 0 <= config.example < len(rows):
        raise ConfigError(f"{where} field 'example' is {config.example}, but there are {len(rows)} rows "
                          f"(after filter and skipped rows): use 0 to {len(rows) - 1}")


def check_filter(config: ExperimentConfig, ds, source: str) -> None:
    """Each filter column exists, and the filter keeps at least one row."""
    where = f"{config.source or 'config'}:"
    for column in config.filter:
        if column not in ds.column_names:
            raise ConfigError(f"{where} field 'filter' names column {column!r}, which the dataset lacks; "
                              f"its columns: {', '.join(ds.column_names)}")
    for column, accepted in config.filter.items():
        values = set(ds[column])
        if not values & set(accepted):
            found = ", ".join(sorted(map(repr, values), key=str)[:10])
            raise ConfigError(f"{where} field 'filter' keeps no rows of {source}: column {column!r} has none of "
                              f"{accepted}; its values: {found}")
    if config.filter and not any(all(row[c] in a for c, a in config.filter.items()) for row in ds.select_columns(list(config.filter))):
        raise ConfigError(f"{where} field 'filter' keeps no rows of {source}: no row has all of {config.filter}")


def check_architecture(config: ExperimentConfig, model_config) -> None:
    """Build the model without weights (meta device) and ask probe's adapters whether they can swap its
    attention: an unsupported architecture is refused before any weights are read."""
    if config.attention == "reference" and "random_weights" not in config.controls:
        return  # nothing is swapped
    import torch
    from transformers import AutoModel

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_config(model_config)
    except Exception:
        return  # building it is the real load's business, and its error is reported there
    try:
        plugins.adapter_for(model)
    except ValueError as error:
        raise ConfigError(f"{config.source or 'config'}: field 'model' ({config.model}): {error}; "
                          "or set attention: reference without the random_weights control") from None
