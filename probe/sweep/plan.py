"""`probe sweep`: one experiment over many words, models and seeds, each combination (a *cell*) a normal run
folder; then one tidy table and one plot over all of them (probe/sweep_report.py).

A sweep file lists experiment configs and what to vary:

    name: senses
    experiments: [mole.yaml, tower.yaml, tower-size.yaml]   # relative to this file
    models: [minilm-l6, smollm2-135m]                      # default: each experiment's own model
    seeds: [0]                                             # default: each experiment's own seed
    set: {folds: 5}                                        # overrides for every cell, as `probe run --set`
    tracking: file:./mlruns                                # optional: log each cell to MLflow

or names one experiment and a folder of datasets (``datasets: words/``): each data file there is a word,
run with that experiment. An experiment on a benchmark folder (dataset ``coarsewsd``) can range over its
words instead (``words: all`` or ``words: [apple, java]``): a cell per word. ``probes`` (``[logreg,
nearest-centroid]``, each a name or a mapping with options) multiplies the cells by probe; each cell's
experiment is then named ``<experiment>.<probe>``. A cell whose run folder holds complete results of the
same config is skipped.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from probe.pipeline.config import (
    ConfigError,
    ExperimentConfig,
    load_config,
    paths_beside,
    read_yaml_mapping,
)
from probe.pipeline.datafiles import BUILDERS
from probe.store.files import default_output, folder_name, write_text_atomic

CELL_FILE = "cell.json"  # written into a cell's run folder once every reporter has finished


class SweepConfig(BaseModel):
    """A validated sweep file; ``load_sweep`` gives errors that name the field."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str = "sweep"
    experiments: list[str] = Field(min_length=1)
    datasets: str | None = None
    words: str | list[str] | None = None
    probes: list[str | dict[str, Any]] = []
    models: list[str] = []
    seeds: list[int] | None = Field(None, min_length=1)
    overrides: dict[str, Any] = Field({}, alias="set")
    output: str | None = None
    tracking: str | None = None
    source: str = ""  # the sweep file, for messages; relative paths in it are relative to its folder

    @property
    def folder(self) -> Path:
        return Path(self.source).parent if self.source else Path(".")

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else default_output(self.name)


FIELDS = ["name", "experiments", "datasets", "words", "probes", "models", "seeds", "set", "output", "tracking"]


def is_sweep_file(raw: dict) -> bool:
    """A sweep file lists ``experiments``; anything else is an experiment config."""
    return "experiments" in raw


def read_yaml(path: str | Path) -> dict:
    return read_yaml_mapping(path, what="file")


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a sweep file; ``overrides`` (from the command line) replace its fields."""
    raw = _paths_beside_sweep(read_yaml(path), Path(path).parent)
    raw.setdefault("name", Path(path).stem)
    _refuse_escaping_output(raw.get("output"), path)
    overrides = dict(overrides or {})
    if isinstance(overrides.get("datasets"), str):  # given on the command line: relative to the current folder
        overrides["datasets"] = str(Path(overrides["datasets"]).resolve())
    if isinstance(raw.get("set"), dict) and "set" in overrides:  # --set adds to the file's overrides
        overrides["set"] = {**raw["set"], **overrides["set"]}
    return validate_sweep({**raw, **overrides}, source=str(path))


def _paths_beside_sweep(raw: dict, folder: Path) -> dict:
    """The sweep file's relative paths made absolute against its folder (the rule experiment configs follow,
    probe.pipeline.config.paths_beside): experiments, datasets, models that are paths, and the paths in
    ``set``."""
    raw = dict(raw)
    if isinstance(raw.get("experiments"), (str, list)):
        listed = [raw["experiments"]] if isinstance(raw["experiments"], str) else raw["experiments"]
        raw["experiments"] = [str((folder / e).resolve()) if isinstance(e, str) and e.strip() else e
                              for e in listed]
    if isinstance(raw.get("datasets"), str) and raw["datasets"].strip():
        raw["datasets"] = str((folder / raw["datasets"]).resolve())
    if isinstance(raw.get("models"), list):
        raw["models"] = [paths_beside({"model": m}, folder)["model"] for m in raw["models"]]
    if isinstance(raw.get("set"), dict):
        raw["set"] = paths_beside(raw["set"], folder)
    return raw


def _refuse_escaping_output(output, path) -> None:
    """A sweep file's ``output`` is where it writes and replaces runs: a relative folder, without ``..``,
    under the folder probe runs in. Anywhere else is for the person running it to say (``--output``)."""
    if not isinstance(output, str):
        return  # not a path at all: validate_sweep says so
    if Path(output).is_absolute() or output.startswith("~") or ".." in Path(output).parts:
        raise ConfigError(f"{path}: field 'output' is {output!r}; a sweep file's output must be a relative "
                          "folder without '..' (it is made under the current folder): give a folder elsewhere "
                          "on the command line with --output")


def validate_sweep(raw: dict, source: str = "<sweep>") -> SweepConfig:
    unknown = [key for key in raw if key not in FIELDS]
    if unknown:
        near = difflib.get_close_matches(unknown[0], FIELDS, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{source}: unknown field {unknown[0]!r}.{hint} Accepted fields: {', '.join(FIELDS)}")
    if isinstance(raw.get("experiments"), str):
        raw = {**raw, "experiments": [raw["experiments"]]}
    try:
        sweep = SweepConfig.model_validate({**raw, "source": source})
    except ValidationError as error:
        raise ConfigError(f"{source}: {_message(error.errors()[0])}") from None
    for field in ("datasets", "words"):
        if getattr(sweep, field) is not None and len(sweep.experiments) != 1:
            raise ConfigError(f"{source}: field {field!r} runs one experiment over a folder of words; "
                              f"field 'experiments' lists {len(sweep.experiments)}")
    if sweep.datasets is not None and sweep.words is not None:
        raise ConfigError(f"{source}: fields 'datasets' (a folder of data files) and 'words' (the words of the "
                          "experiment's benchmark folder) are two ways to name the words; give one")
    if isinstance(sweep.words, str) and sweep.words != "all":
        raise ConfigError(f"{source}: field 'words' is {sweep.words!r}; write all, or a list such as [apple, java]")
    for number, probe in enumerate(sweep.probes, start=1):
        if isinstance(probe, dict) and not isinstance(probe.get("name"), str):
            raise ConfigError(f"{source}: field 'probes', entry {number}: a mapping needs a 'name' (a registered "
                              f"probe), got {probe!r}")
    return sweep


def _message(error: dict) -> str:
    field = ".".join(str(part) for part in error["loc"])
    return f"field {field!r}: {error['msg'].lower()}, got {error['input']!r}"


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: an experiment (a word) on one model with one seed, in its own folder."""

    experiment: str
    model: str
    seed: int
    config: ExperimentConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.experiment}/{_folder_name(self.model)}/seed{self.seed}"


def plan_cells(sweep: SweepConfig) -> list[Cell]:
    """Every (experiment or word) × probe × model × seed, its config validated now, before any model work."""
    cells = []
    for path, extra in _with_probes(sweep, _experiments(sweep)):
        base = load_config(path, {**sweep.overrides, **extra})
        _refuse_regression(base, sweep.source)
        for model in sweep.models or [base.model]:
            for seed in [base.seed] if sweep.seeds is None else sweep.seeds:
                config = load_config(path, {**sweep.overrides, **extra, "model": model, "seed": seed})
                # The experiment's name is a label from a config: one safe folder name, never a path.
                run_dir = sweep.output_dir() / folder_name(config.name) / _folder_name(model) / f"seed{seed}"
                cells.append(Cell(config.name, model, seed, config, run_dir.resolve()))
    _refuse_duplicates(cells, sweep.source)
    return cells


def _refuse_regression(config: ExperimentConfig, source: str) -> None:
    """A sweep's report compares best-layer accuracies, which a regression experiment does not have."""
    from probe.pipeline.tasks import REGRESSION, resolved

    if resolved(config).task == REGRESSION:
        raise ConfigError(f"{source}: field 'experiments': {config.source or config.name} is a regression experiment "
                          "(R², not accuracy), which sweeps do not summarise yet; run it with probe run")


def _experiments(sweep: SweepConfig) -> list[tuple[Path, dict]]:
    """(experiment file, overrides) per experiment; with ``datasets``, one per data file in the folder."""
    paths = [_beside(sweep, experiment) for experiment in sweep.experiments]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{sweep.source}: field 'experiments': {path} does not exist")
    if sweep.words is not None:
        return _benchmark_words(sweep, paths[0])
    if sweep.datasets is None:
        return [(path, {}) for path in paths]
    folder = _beside(sweep, sweep.datasets)
    if not folder.is_dir():
        raise ConfigError(f"{sweep.source}: field 'datasets': {folder} is not a folder")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in BUILDERS and not f.name.startswith("."))
    if not files:
        raise ConfigError(f"{sweep.source}: field 'datasets': {folder} holds no {'/'.join(BUILDERS)} files")
    dataset = _file_dataset_options(paths[0])
    return [(paths[0], {"name": f.stem, "dataset": {**dataset, "name": "file", "path": str(f)}}) for f in files]


def _with_probes(sweep: SweepConfig, experiments: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """Each experiment once per probe of ``probes`` (as it is when there are none), named ``<name>.<probe>``."""
    if not sweep.probes:
        return experiments
    found = []
    for path, extra in experiments:
        name = extra.get("name") or load_config(path, {**sweep.overrides, **extra}).name
        for probe in sweep.probes:
            label = probe if isinstance(probe, str) else _probe_label(probe)
            found.append((path, {**extra, "probe": probe, "name": f"{name}.{label}"}))
    return found


def _probe_label(probe: dict) -> str:
    """A probe with options as a short, stable label: its name and the options, e.g. ``logreg-C1``."""
    options = "-".join(f"{key}{value}" for key, value in sorted(probe.items()) if key != "name")
    return f"{probe['name']}-{options}" if options else probe["name"]


def _benchmark_words(sweep: SweepConfig, experiment: Path) -> list[tuple[Path, dict]]:
    """(experiment, overrides) per word of the experiment's benchmark folder (dataset ``coarsewsd``)."""
    config = load_config(experiment, sweep.overrides)
    folder = config.dataset_options.get("path")
    if config.dataset_name != "coarsewsd" or not isinstance(folder, str):
        raise ConfigError(f"{sweep.source}: field 'words' ranges over a benchmark folder's words, so the "
                          f"experiment's dataset must be coarsewsd with a path; {experiment} has "
                          f"{config.dataset_name!r}")
    found = sorted(f.name for f in Path(folder).iterdir() if (f / "classes_map.txt").is_file()) \
        if Path(folder).is_dir() else []
    words = found if sweep.words == "all" else list(sweep.words)
    missing = [word for word in words if word not in found]
    if missing or not words:
        raise ConfigError(f"{sweep.source}: field 'words': {', '.join(map(repr, missing)) or 'no word'} not in "
                          f"{folder} (words there: {', '.join(found) or 'none'})")
    dataset = {"name": "coarsewsd", **config.dataset_options}
    return [(experiment, {"name": word, "dataset": {**dataset, "words": [word]}}) for word in words]


def _file_dataset_options(experiment: Path) -> dict:
    """A `file` dataset's field renames (text_field, …) carry over to every word's file."""
    dataset = read_yaml(experiment).get("dataset")
    if isinstance(dataset, dict) and dataset.get("name") == "file":
        return {k: v for k, v in dataset.items() if k not in ("name", "path")}
    return {}


def _beside(sweep: SweepConfig, path: str) -> Path:
    """A path of the sweep's, relative to its file's folder (absolute ones as they are)."""
    return sweep.folder / path


def _folder_name(model: str) -> str:
    """A model name as one folder name: itself when it is a safe one already (store.files.folder_name leaves
    it as it is; ``..`` is not), else its last part plus a short hash of the whole."""
    if folder_name(model, fallback="") == model:
        return model
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model).strip("_") or "model"
    return f"{tail}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def _refuse_duplicates(cells: list[Cell], source: str) -> None:
    seen: dict[Path, Cell] = {}
    for cell in cells:
        if cell.run_dir in seen:
            raise ConfigError(f"{source}: two cells would write to {cell.run_dir} ({cell.name} twice): "
                              "give the experiments different names")
        seen[cell.run_dir] = cell


# ---------------------------------------------------------------- finished or not


def config_hash(config: ExperimentConfig) -> str:
    """Everything that shaped a cell's results (its settings), hashed."""
    from probe.pipeline.extract import cache_key

    return cache_key(config.settings())


def is_finished(cell: Cell) -> bool:
    """True when the cell's folder holds complete results (every reporter ran) of this very config."""
    from probe.pipeline.results import load_results

    try:
        marker = json.loads((cell.run_dir / CELL_FILE).read_text())
        load_results(cell.run_dir)  # validates: a truncated or foreign results.json does not count
    except (OSError, ValueError):
        return False
    return marker.get("config_hash") == config_hash(cell.config)


def mark_finished(cell: Cell, seconds: float) -> None:
    from probe.pipeline.results import timestamp

    marker = {"cell": cell.name, "config_hash": config_hash(cell.config), "seconds": round(seconds, 2),
              "finished": timestamp()}
    write_text_atomic(cell.run_dir / CELL_FILE, json.dumps(marker, indent=2) + "\n")
