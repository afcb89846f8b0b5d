"""Experiment configs: plain YAML, checked field by field with messages that say what to write instead."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

ATTENTION_MODES = ("reimplemented", "reference", "both")
POSITIONS = ("target", "last")
POOLINGS = ("first", "last", "mean")
CONTROLS = ("majority", "shuffled", "random_weights")
ON_BAD_ROWS = ("raise", "skip")
DTYPES = ("float32", "float16", "bfloat16")

# The published GPT-2 checkpoints' shapes, for building random-weight stand-ins offline.
GPT2_SHAPES = {
    "gpt2": {},
    "distilgpt2": {"n_layer": 6},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}


class ConfigError(ValueError):
    """A config field is missing, misspelt or has a value probe does not accept."""


@dataclass
class ExperimentConfig:
    model: str
    dataset: str | dict
    name: str = "experiment"
    revision: str | None = None
    description: str = ""
    probe: str | dict = "logreg"
    positions: list[str] = field(default_factory=lambda: ["target"])
    pooling: str = "mean"
    layers: str | list[int] = "all"
    attention: str = "reimplemented"
    folds: int = 5
    seed: int = 0
    batch_size: int = 16
    dtype: str = "float32"
    filter: dict[str, list] = field(default_factory=dict)
    split_by: str | None = None
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    reporters: list[str] = field(default_factory=lambda: ["json", "csv", "plots", "summary"])
    metrics: list[str] | None = None  # registered metric names; None: all registered
    plugins: list[str] = field(default_factory=list)
    on_bad_rows: str = "raise"
    example: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # free-form settings for plugins
    source: str = ""  # the file the config came from, for messages

    @property
    def dataset_name(self) -> str:
        return self.dataset if isinstance(self.dataset, str) else self.dataset["name"]

    @property
    def dataset_options(self) -> dict:
        return {} if isinstance(self.dataset, str) else {k: v for k, v in self.dataset.items() if k != "name"}

    @property
    def probe_name(self) -> str:
        return self.probe if isinstance(self.probe, str) else self.probe["name"]

    @property
    def probe_options(self) -> dict:
        return {} if isinstance(self.probe, str) else {k: v for k, v in self.probe.items() if k != "name"}

    def settings(self) -> dict:
        """Everything that shaped the results, for results.json."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("source",)}


FIELD_NAMES = [f.name for f in fields(ExperimentConfig) if f.name != "source"]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read, override (``--set key=value``) and validate a YAML experiment config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        raw[key] = value
    # Plugin files, and a dataset's path when it exists there, are relative to the config file.
    raw["plugins"] = [str((path.parent / p).resolve()) for p in _as_list(raw.get("plugins") or [])]
    dataset = raw.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
        beside_config = path.parent / dataset["path"]
        if beside_config.exists() and not Path(dataset["path"]).is_absolute():
            raw["dataset"] = {**dataset, "path": str(beside_config.resolve())}
    return validate(raw, source=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set folds=3")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def validate(raw: dict, source: str = "<config>") -> ExperimentConfig:
    where = f"{source}:"
    unknown = [key for key in raw if key not in FIELD_NAMES]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, FIELD_NAMES, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{where} unknown field {key!r}.{hint} Accepted fields: {', '.join(FIELD_NAMES)}")
    for required in ("model", "dataset"):
        if raw.get(required) in (None, ""):
            raise ConfigError(f"{where} field {required!r} is required")
    config = ExperimentConfig(**raw, source=source)

    _check_type(where, "model", config.model, str)
    _check_type(where, "name", config.name, str)
    _check_type(where, "description", config.description, str)
    _check_named(where, "dataset", config.dataset)
    _check_named(where, "probe", config.probe)
    _check_choice(where, "attention", config.attention, ATTENTION_MODES)
    _check_choice(where, "pooling", config.pooling, POOLINGS)
    _check_choice(where, "dtype", config.dtype, DTYPES)
    _check_choice(where, "on_bad_rows", config.on_bad_rows, ON_BAD_ROWS)
    config.positions = _as_list(config.positions)
    config.controls = _as_list(config.controls)
    for value in config.positions:
        _check_choice(where, "positions", value, POSITIONS)
    for value in config.controls:
        _check_choice(where, "controls", value, CONTROLS)
    for name in ("folds", "seed", "batch_size", "example"):
        _check_type(where, name, getattr(config, name), int)
    if config.folds < 2:
        raise ConfigError(f"{where} field 'folds' must be at least 2, got {config.folds}")
    if config.batch_size < 1:
        raise ConfigError(f"{where} field 'batch_size' must be at least 1, got {config.batch_size}")
    if config.layers != "all":
        layers = _as_list(config.layers)
        if not layers or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
            raise ConfigError(f"{where} field 'layers' must be 'all' or a list of layer numbers ≥ 0, got {config.layers!r}")
        config.layers = sorted(set(layers))
    if not isinstance(config.filter, dict):
        raise ConfigError(f"{where} field 'filter' must map a column to accepted values, e.g. {{cue: [left]}}")
    config.filter = {key: _as_list(values) for key, values in config.filter.items()}
    if config.split_by is not None:
        _check_type(where, "split_by", config.split_by, str)
    if config.metrics is not None:
        config.metrics = _as_list(config.metrics)
    for name in ("reporters", "plugins"):
        setattr(config, name, _as_list(getattr(config, name)))
    return config


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_type(where, name, value, kind) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise ConfigError(f"{where} field {name!r} must be {article} {kind.__name__}, got {value!r}")


def _check_choice(where, name, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{where} field {name!r} is {value!r}; accepted values: {', '.join(choices)}")


def _check_named(where, name, value) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(
            f"{where} field {name!r} must be a name or a mapping with a 'name' key and options, got {value!r}"
        )
