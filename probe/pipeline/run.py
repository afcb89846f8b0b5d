"""Run one experiment, stage by stage; each stage takes plain typed values and returns one:

ExperimentConfig → Services (read-only: model, tokenizer, cache, ranks; the model loaded once, lazily)
                 → Rows → Splits (subsets and their folds) → Features (a FeatureStore per attention mode
                 and control) → Results (the probes' fits and controls) → reports (Results + RunData).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from probe import plugins
from probe.pipeline import controls, measures, regression, statistics
from probe.pipeline.checks import (
    check_architecture,
    check_config,
    check_filter,
    check_layers,
    check_options,
    check_rows,
)
from probe.pipeline.config import ConfigError, ExperimentConfig
from probe.pipeline.diagnostics import check_untrained_labels, row_numbers, rows_without_split
from probe.pipeline.diagnostics import collect as collect_diagnostics
from probe.pipeline.context import (
    Features,
    Rows,
    RunData,
    Services,
    Split,
    Splits,
    activation_plugins,
    column,
    model_load_error,  # noqa: F401  (re-exported: the CLI's compare command uses it)
    resolve_model,
)
from probe.pipeline.interventions import activation_interventions
from probe.pipeline.tasks import check_labels, is_regression, resolved
from probe.pipeline.results import (
    Baseline,
    DatasetInfo,
    LayerResult,
    ModelInfo,
    Provenance,
    Results,
    baseline_key,
)
from probe.scale.ranks import process_group
from probe.store.files import (
    DiskFull,
    cache_lock,
    disk_full,
    folders_under,
    is_disk_full,
    missing_parents,
    new_folders,
    remove_empty,
    size_or_none,
    staged_output,
)
from probe.store.tables import rows_folder
from probe.store.usage import cache_dir_or_default, running_on, touch

__all__ = ["Services", "RunData", "run_experiment", "load_dataset", "resolve_model"]


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool | str = True,
    n_jobs: int | None = None,
    timings: dict | None = None,
) -> Results | None:
    """Run ``config`` and write its reports to ``output_dir``, caching in ``cache_dir`` (None: the user's cache,
    see probe.store.usage). ``n_jobs``: parallel probe fits (None: all
    cores; the results do not depend on it). ``timings``, if given, receives seconds per phase. Under
    torchrun every process extracts its share and only rank 0 probes: the others return None."""
    from time import perf_counter

    clock = _Clock(timings, perf_counter)
    # the output folder is replaced whole once every report is done; None: the user's cache
    output_dir, cache_dir = Path(output_dir), cache_dir_or_default(cache_dir)
    for path in config.plugins:
        plugins.load_plugin_file(path)
    check_config(config, output_dir, cache_dir)  # names, options, folders: before any data or model work
    config = resolved(config)  # classification or regression, and the controls that fit it
    cache_folders, made = folders_under(cache_dir), missing_parents(cache_dir)
    try:
        plugins.call_each("experiment_started", config=config, output_dir=output_dir)  # before the cache is touched
        with running_on(cache_dir), rows_folder():  # pruning keeps what this run uses; its rows' files go with it
            results = _run(config, output_dir, cache_dir, progress, n_jobs, clock)
    except BaseException:
        remove_empty(new_folders(cache_dir, cache_folders) + made)  # a failed run leaves no empty folders
        raise
    plugins.call_each("experiment_finished", config=config, results=results, output_dir=output_dir)
    clock.lap("report")
    return results


def _run(config: ExperimentConfig, output_dir: Path, cache_dir: Path, progress, n_jobs, clock) -> Results:
    services = make_services(config, cache_dir, progress)
    layers = check_layers(config, services.n_blocks)  # the depth comes from config.json: no weights read
    rows = load_rows(services)
    splits = checked_splits(services, rows, layers)  # fails before any model work, not after
    clock.lap("load")
    with process_group(services.ranks, services.device):
        features = extract_features(services, rows, layers)
    clock.lap("extract")
    if not services.ranks.is_main:
        return None  # under torchrun, rank 0 probes and reports what every rank extracted
    run = RunData(services, rows, splits, features, layers)
    results = probe_layers(run, n_jobs)
    results.diagnostics = collect_diagnostics(run, results)
    clock.lap("probe")
    from uuid import uuid4

    run_id = uuid4().hex  # in the folder's marker: who published it (a finished-run entry checks it)
    with staged_output(output_dir, run_id) as staging:  # all reports appear together, or none
        write_reports(results, staging, run)
    results._run_dir, results._run_id = output_dir, run_id
    return results


def make_services(config: ExperimentConfig, cache_dir: Path, progress: bool | str = True) -> Services:
    """The run's Services: ranks (from the launcher) and device, checked with the dtype and ``max_memory``
    before any model work; a ConfigError names the option at fault."""
    from probe.scale.placement import check_max_memory
    from probe.scale.ranks import launched_ranks

    try:
        services = Services(config, resolve_model(config.model, config.revision), Path(cache_dir), progress,
                            launched_ranks())
        _ = services.device  # resolved now, with the dtype it must be able to do
        if config.max_memory is not None and config.device_map is None:
            raise ValueError("max_memory limits what accelerate places, so it needs device_map (e.g. auto)")
        if config.max_memory is not None:
            check_max_memory(config.max_memory, services.model_config, config.dtype)
    except ValueError as error:
        raise ConfigError(f"{config.source or 'config'}: {error}") from None
    return services


def load_rows(services: Services) -> Rows:
    """The config's rows, prepared, filtered and fitted to the model's positions (``long_texts``), checked."""
    import pyarrow

    from probe.pipeline import positions
    from probe.pipeline.lengths import fit_rows, max_positions
    from probe.pipeline.words import drop_words_without_tokens, is_token_task

    config = services.config
    table, skipped, numbers, notes = load_numbered_rows(config)
    # The rows are in a file by now (store/tables.py) and the batches they were built from are freed; Arrow's
    # allocator may keep such memory for reuse, which nothing later in a run asks for.
    pyarrow.default_memory_pool().release_unused()
    table, too_long = fit_rows(table, numbers, lambda: services.tokenizer, max_positions(services.config_fields),
                               policy=config.long_texts, on_bad_rows=config.on_bad_rows, source=_source(config))
    numbers = [n for n in numbers if n not in {problem.row for problem in too_long}]
    table, unreadable = positions.fit_rows(config.positions, lambda: services.tokenizer, table, numbers,
                                           on_bad_rows=config.on_bad_rows, source=_source(config))
    too_long += unreadable
    left_out = {problem.row for problem in too_long}
    numbers = [n for n in numbers if n not in left_out]
    if is_token_task(table):  # every word must have a token of its own to be probed
        table, numbers, untokenized = drop_words_without_tokens(table, numbers, services.tokenizer,
                                                                config.on_bad_rows, _source(config))
        too_long += untokenized
    check_rows(config, table)
    return Rows(table, tuple(skipped + too_long), tuple(numbers), tuple(notes))


def checked_splits(services: Services, rows: Rows, layers) -> Splits:
    """The rows' Splits, after the checks that need the rows: the architecture can be swapped (unless
    every vector is cached already), the controls and measures can run."""
    config = services.config
    if not features_cached(services, rows, layers):  # a rerun on a full cache swaps nothing: no need to ask
        check_architecture(config, services.model_config)
    splits = make_splits(rows.table, config)
    check_untrained_labels(config, splits, row_numbers(rows))  # an error only under options.diagnostics.strict
    controls.check(config, rows, splits)
    measures.check(config)
    return splits


class _Clock:
    def __init__(self, timings, now):
        self.timings, self.now, self.start = timings, now, now()

    def lap(self, phase: str) -> None:
        if self.timings is not None:
            end = self.now()
            self.timings[phase] = self.timings.get(phase, 0.0) + end - self.start
            self.start = end


# ---------------------------------------------------------------- rows


def load_dataset(config: ExperimentConfig):
    """The config's dataset, prepared and filtered; bad rows raise or are skipped per ``on_bad_rows``.
    Under a fixed split only the rows of its parts (train, test, dev) are kept."""
    rows, skipped, _, _ = load_numbered_rows(resolved(config))
    return rows, skipped


def load_numbered_rows(config: ExperimentConfig):
    """``load_dataset``'s (rows, skipped problems), each row's 1-based number in its source (for messages
    about the rows that later checks find) and the Diagnostics of loading (rows a fixed split leaves out)."""
    from probe.pipeline.data import DataError, prepare
    from probe.pipeline.evaluation import FixedSplit, protocol
    from probe.pipeline.positions import needs_target

    registered = plugins.lookup("dataset", config.dataset_name)
    check_options(f"{config.source or 'config'}:", "dataset", config.dataset_name, registered.value,
                  config.dataset_options)  # load_dataset is also called without check_config
    try:
        ds = registered.value(**config.dataset_options)
    except (DataError, ConfigError, plugins.PluginError):
        raise
    except Exception as error:
        raise plugins.raised(registered, error) from error
    source = _source(config)
    check_filter(config, ds, source)
    if "label" in ds.column_names:  # a loader without labels is told so by prepare
        check_labels(config, ds["label"], range(1, len(ds) + 1))
    how = protocol(config)
    columns = {"split_by": [config.split_by] if config.split_by else [],
               "evaluation": [how.split_field] if isinstance(how, FixedSplit) else []}
    for field, named in columns.items():
        for name in named:
            if name not in ds.column_names:
                raise ConfigError(
                    f"{config.source}: field {field!r} names column {name!r}, which the dataset lacks; "
                    f"its columns: {', '.join(ds.column_names)}"
                )
    parts = set(how.parts()) if isinstance(how, FixedSplit) else None
    notes = []
    if parts:
        _check_parts_exist(ds[how.split_field], how, config)
        notes = _rows_without_split(ds, how.split_field, config, source)

    def keep(row) -> bool:
        kept = all(row[column] in accepted for column, accepted in config.filter.items())
        # The split column's values are compared as text: a split of numbers matches however YAML read them.
        return kept and (parts is None or str(row[how.split_field]) in parts)

    rows, skipped = prepare(ds, source=source, n_folds=how.min_rows_per_label(), on_error=config.on_bad_rows,
                            keep=keep if config.filter or parts else None, needs_target=needs_target(config.positions),
                            numeric=is_regression(config))
    bad = {problem.row for problem in skipped}
    kept = (n for n, row in enumerate(ds, start=1) if keep(row)) if config.filter or parts else range(1, len(ds) + 1)
    numbers = [n for n in kept if n not in bad]
    if len(numbers) != len(rows):  # a loader that numbers rows its own way: position in the prepared rows
        numbers = list(range(1, len(rows) + 1))
    return rows, skipped, numbers, notes


def _rows_without_split(ds, split_field: str, config: ExperimentConfig, source: str) -> list:
    """The rows (that the config's filter keeps) with no value in the fixed split's column, as a Diagnostic."""
    columns = ds.select_columns([split_field, *[c for c in config.filter if c != split_field]])
    kept = [(n, row[split_field]) for n, row in enumerate(columns, start=1)
            if all(row[c] in accepted for c, accepted in config.filter.items())]
    found = rows_without_split([value for _, value in kept], [n for n, _ in kept], split_field, source)
    return [found] if found else []


def _source(config: ExperimentConfig) -> str:
    return str(config.dataset_options.get("path", config.dataset_name))


def _check_parts_exist(values, how, config: ExperimentConfig) -> None:
    """Each part the fixed split names must occur in its column (a misspelt part would probe nothing)."""
    from collections import Counter

    found = Counter(str(value) for value in values)
    for part in how.parts():
        if not found[part]:
            listed = ", ".join(f"{value!r} ({n} rows)" for value, n in sorted(found.items()))
            raise ConfigError(f"{config.source}: field 'evaluation' names {how.split_field} = {part!r}, which no "
                              f"row has; values found: {listed}")


def make_splits(rows, config: ExperimentConfig) -> Splits:
    """Each subset's folds under the config's evaluation protocol (probe/pipeline/evaluation.py); ``rows``:
    the prepared rows' table."""
    from probe.pipeline.evaluation import FixedSplit

    how = config.protocol
    subsets = _subsets(rows, config.split_by).items()
    if isinstance(how, FixedSplit):
        return Splits(tuple(_fixed_split(rows, config, how, name, index) for name, index in subsets))
    return Splits(tuple(_cross_validated(rows, config, how, name, index) for name, index in subsets))


def _cross_validated(rows, config: ExperimentConfig, how, name: str, index: np.ndarray) -> Split:
    """One subset's k folds; the shuffled control gets permuted labels and folds of its own."""
    from probe.science.probes import shuffled_labels

    numbers = is_regression(config)
    y = regression.numeric_labels(rows, index) if numbers else np.asarray(rows["label"])[index]
    every_group = column(rows, "group")
    groups = [every_group[i] for i in index]
    folds = how.folds(y, groups, config.seed, regression=True) if numbers else how.folds(y, groups, config.seed)
    if "shuffled" not in config.controls:
        return Split(name, index, y, folds)
    shuffled_y = shuffled_labels(y, config.seed)
    # numbers are not stratified, so the shuffled numbers' folds are the probe's own
    shuffled_folds = folds if numbers else how.folds(shuffled_y, groups, config.seed)
    return Split(name, index, y, folds, shuffled_y=shuffled_y, shuffled_folds=shuffled_folds)


def _fixed_split(rows, config: ExperimentConfig, how, name: str, index: np.ndarray) -> Split:
    """One subset's train/test fold; the shuffled control permutes labels within each part."""
    from probe.pipeline.data import DataError
    from probe.pipeline.evaluation import check_fixed_split, shuffled_within

    y = np.asarray(rows["label"])[index]
    every_part = column(rows, how.split_field)
    parts = [every_part[i] for i in index]
    problems = check_fixed_split(parts, y, how, f"{config.source}, subset {name!r}")
    if problems:
        raise DataError("the fixed split can't be probed:", problems)
    folds = how.folds(parts)
    shuffled = "shuffled" in config.controls
    return Split(name, index, y, folds,
                 shuffled_y=shuffled_within(y, parts, how.parts(), config.seed) if shuffled else None,
                 shuffled_folds=folds if shuffled else None,
                 dev_folds=how.folds(parts, scored="dev") if how.dev is not None else None)


def describe_evaluation(config: ExperimentConfig, rows: Rows, splits: Splits) -> dict:
    """Which protocol ran, for results.json: the splitter and its folds, or the split's parts and sizes."""
    from probe.pipeline.evaluation import FixedSplit

    how = config.protocol
    grouped = any(group is not None for group in column(rows.table, "group"))
    numbers = {} if isinstance(how, FixedSplit) else {"regression": is_regression(config)}
    described = how.describe(grouped=grouped, **numbers)
    if isinstance(how, FixedSplit):
        everything = next(split for split in splits if split.name == "all")
        train, test = everything.folds[0]
        described["rows"] = {how.train: len(train), how.test: len(test)}
        if everything.dev_folds:
            described["rows"][how.dev] = len(everything.dev_folds[0][1])
    return described


def _subsets(rows, split_by: str | None) -> dict[str, np.ndarray]:
    everything = {"all": np.arange(len(rows))}
    if split_by is None:
        return everything
    values = np.asarray(rows[split_by], dtype=object)
    subsets = {str(v): np.flatnonzero(values == v) for v in sorted(set(values.tolist()), key=str)}
    return {**everything, **subsets}


# ---------------------------------------------------------------- features


def extract_features(services: Services, rows: Rows, layers: list[int]) -> Features:
    """A FeatureStore per attention mode (reference first, while the shared model is unswapped) and for
    the random-weights control; each from the cache when its key is there."""
    loads = {mode: lambda mode=mode: services.load_model(mode) for mode in ("reference", "reimplemented")}
    loads["random_weights"] = services.random_weights_model
    modes = feature_modes(services.config)
    stores = {mode: _extract(services, rows, layers, mode, loads[mode]) for mode in modes}
    return Features(stores, services.config.main_mode)


def feature_modes(config: ExperimentConfig) -> list[str]:
    """The FeatureStores a run needs: its attention mode(s), then the random-weights control's."""
    return config.attention_modes + (["random_weights"] if "random_weights" in config.controls else [])


def features_cached(services: Services, rows: Rows, layers: list[int]) -> bool:
    """Whether every FeatureStore the run needs is complete in the cache (so no model will be run for it)."""
    from probe.pipeline.extract import is_complete

    features = services.cache_dir / "features"
    return all(is_complete(features / feature_key(services, rows, layers, mode), len(rows))
               for mode in feature_modes(services.config))


def _extract(services: Services, rows: Rows, layers, mode: str, load: Callable):
    from probe.pipeline.extract import extract

    config = services.config
    folder = services.cache_dir / "features" / feature_key(services, rows, layers, mode)
    with cache_lock(folder, services.ranks):  # two runs on one cache: the second waits, then finds the chunks done
        touch(folder)  # last use, for `probe cache --prune`; under the lock, so a prune sees it
        return extract(
            load, rows.table["text"], rows.spans, layers=layers, folder=folder, pooling=config.pooling,
            positions=config.positions, position_spans=_own_spans(config, rows), batch_size=config.batch_size,
            progress=services.progress, description=f"{config.name}: {mode}",
            final_norm=_reads_final_norm(services, layers), ranks=services.ranks,
        )


def _own_spans(config: ExperimentConfig, rows: Rows) -> dict[str, list]:
    """Each ``{span: …}`` position's per-row spans, by position name (the target's are ``rows.spans``)."""
    from probe.pipeline.positions import row_spans

    return {name: spans for name, spans in row_spans(config.positions, rows.table, rows.spans).items()
            if name != "target"}


def _reads_final_norm(services: Services, layers) -> bool:
    """Whether the config's final_norm changes these vectors: only when the last layer is among them."""
    return services.config.final_norm and (layers == "all" or services.n_blocks in layers)


def feature_key(services: Services, rows: Rows, layers, mode: str) -> str:
    """Only what changes the vectors: model and weights, rows, layers, pooling, attention, dtype, batch size,
    the seed of random weights, and the plugins that may change activations with the options they may read. A
    reporter's or a measure's own options (``options.<its name>``) never change activations."""
    from probe.pipeline.extract import cache_key, data_fingerprint

    config = services.config
    changing = activation_plugins() if mode != "reference" else []
    own_options = {name.replace("-", "_") for name in config.reporters} | set(config.measures) | {"diagnostics"}
    options = {k: v for k, v in config.options.items() if k not in own_options} if changing else {}
    own_spans = _own_spans(config, rows)
    return cache_key({
        "model": services.model_path, "revision": config.revision, "weights": _weights_fingerprint(services),
        "data": rows.fingerprint, "layers": layers, "pooling": config.pooling,
        "positions": sorted(config.positions),
        # A {span: …} position's vectors follow its columns, which the target's fingerprint does not cover.
        **({"position_spans": {name: data_fingerprint(rows.table["text"], spans) for name, spans in own_spans.items()}}
           if own_spans else {}),
        "attention": mode, "dtype": config.dtype, "seed": config.seed if mode == "random_weights" else None,
        "attention_path": services.attention_path if mode != "reference" else None,
        # CPU and GPU kernels round differently; the vectors of one are not the other's.
        "device": services.device.type if services.device.type != "cpu" else None,
        "activation_plugins": changing, "options": options,
        # Rows sorted by length, right-padded (extract.sorted_batches); the batch size moves the last bits
        # (the matrix-multiply library picks its kernels by the number of rows).
        "batches": "padded", "batch_size": config.batch_size,
        # Only a run that reads the last layer after the final norm gets a key of its own (older caches stay).
        **({"final_norm": True} if _reads_final_norm(services, layers) else {}),
        # Rows sharing a text (a token task's words) share one forward of it (extract.sorted_batches): other
        # batches than one row per text, so other last bits than a cache from before.
        **({"one_forward_per_text": True} if rows.texts_repeat else {}),
    })


def _weights_fingerprint(services: Services) -> str:
    """A local model's files by content (hashed once per file version), so that other weights in their place
    never reuse the vectors; see models.weights_fingerprint."""
    from probe.pipeline.models import weights_fingerprint

    return weights_fingerprint(services.model_path, services.cache_dir / "models" / "digests")


# ---------------------------------------------------------------- probes


def probe_layers(run: RunData, n_jobs=None) -> Results:
    """Every (subset × position × layer) probe and its controls, fitted in parallel; the typed Results."""
    from probe.science.probes import describe_probe, evaluate

    services, rows, splits, features, layers = run.services, run.rows, run.splits, run.features, run.layers
    config = services.config
    numbers = is_regression(config)
    fits = probe_tasks(config, features, splits, layers) + controls.tasks(config, rows, features, splits, layers)
    fits += statistics.nested_tasks(config, rows, features, splits, layers)
    scorer = {"scorer": regression.score} if numbers else {"metrics": chosen_metrics(config)}
    with _progress_bar(services, sum(len(task.folds) for task in fits)) as bar:
        scores = evaluate(fits, services.make_probe(), n_jobs=n_jobs, progress=bar.update,
                          cache=services.cache_dir / "probes", **scorer)
    measured = measures.evaluate(config, features, splits, layers, services.make_probe(), n_jobs)
    labels = [] if numbers else sorted(set(np.asarray(rows.table["label"]).tolist()))
    results = Results(
        experiment=config.name, description=config.description, task=config.task or "classification",
        model=ModelInfo(name=config.model, path=services.model_path, revision=config.revision, layers=services.n_blocks),
        settings=config.settings(), versions=versions(), extraction=extraction_info(services, features),
        dataset=DatasetInfo(name=config.dataset_name, rows=len(rows), labels=labels,
                            skipped_rows=[str(p) for p in rows.skipped]),
        layers=[], provenance=Provenance.now(),
        evaluation=describe_evaluation(config, rows, splits),
        probe={"name": config.probe_name, "options": config.probe_options, **describe_probe(services.make_probe()())},
        interventions=activation_interventions(services),  # an ablating plugin's run must not look clean
    )
    for split in splits:
        if "majority" in config.controls:
            majority = scores[(split.name, "majority")]
            results.baselines[baseline_key("majority", split.name)] = Baseline(
                **{k: majority[k] for k in ("accuracy", "accuracy_std", "macro_f1")})
        if "mean" in config.controls:
            results.baselines[baseline_key("mean", split.name)] = regression.baseline(scores[(split.name, "mean")])
        for position in config.positions:
            for layer in layers:
                if numbers:
                    row = regression.layer_result(config, scores, split, position, layer)
                else:
                    row = layer_result(config, features, scores, split, position, layer)
                    controls.fill(row, config, scores, (split.name, position, layer))
                row.measures = measured.get((split.name, position, layer))
                results.rows.append(row)
                plugins.call_each("layer_result", config=config, layer=layer, result=row)
            first = scores[(split.name, position, layers[0], "probe")]
            results.baselines[baseline_key(f"layer{layers[0]}_{position}", split.name)] = (
                regression.baseline(first) if numbers else Baseline(accuracy=first["accuracy"]))
    (regression if numbers else statistics).finish(results, run, scores)
    return results


def extraction_info(services: Services, features: Features) -> dict:
    """How the vectors were computed, beyond the settings: which attention ran for each store (Hugging
    Face's ``eager`` for the reference, probe's ``fast`` or ``exact`` path otherwise)."""
    paths = {mode: "eager" if mode == "reference" else services.attention_path for mode in features.stores}
    return {"attention_path": paths}


def probe_tasks(config: ExperimentConfig, features: Features, splits: Splits, layers: list[int]) -> list:
    """The fits to run (k folds, or a fixed split's one), each keyed by (subset, position, layer, what) — or
    (subset, majority); under a fixed split with a dev part, (…, "dev") scores the dev rows."""
    from sklearn.dummy import DummyClassifier

    from probe.science.probes import FitTask

    stores, main = features.stores, features.main_mode
    tasks = []
    for split in splits:
        if "majority" in config.controls:
            no_features = np.zeros((len(split.y), 1), dtype=np.float32)
            tasks.append(FitTask((split.name, "majority"), no_features, split.y, split.folds, metrics=False,
                                 make_probe=lambda: DummyClassifier(strategy="most_frequent")))
        if "mean" in config.controls:  # the regression baseline: each training part's mean
            no_features = np.zeros((len(split.y), 1), dtype=np.float32)
            tasks.append(FitTask((split.name, "mean"), no_features, split.y, split.folds, metrics=False,
                                 make_probe=regression.mean_predictor))
        for position in config.positions:
            for layer in layers:
                X = stores[main].rows(position, layer, split.index)
                key = (split.name, position, layer)
                tasks.append(FitTask((*key, "probe"), X, split.y, split.folds))
                if "shuffled" in config.controls:
                    tasks.append(FitTask((*key, "shuffled"), X, split.shuffled_y, split.shuffled_folds, metrics=False))
                if "random_weights" in config.controls:
                    Xr = stores["random_weights"].rows(position, layer, split.index)
                    tasks.append(FitTask((*key, "random_weights"), Xr, split.y, split.folds, metrics=False))
                if config.attention == "both":
                    Xref = stores["reference"].rows(position, layer, split.index)
                    tasks.append(FitTask((*key, "reference"), Xref, split.y, split.folds, metrics=False))
                if split.dev_folds:
                    tasks.append(FitTask((*key, "dev"), X, split.y, split.dev_folds, metrics=False))
    return tasks


def layer_result(config: ExperimentConfig, features: Features, scores: dict, split: Split, position: str,
                 layer: int) -> LayerResult:
    key = (split.name, position, layer)
    row = LayerResult(layer=layer, position=position, subset=split.name, **scores[(*key, "probe")])
    if "shuffled" in config.controls:
        row.shuffled_accuracy = scores[(*key, "shuffled")]["accuracy"]
        row.selectivity = row.accuracy - row.shuffled_accuracy
    if "random_weights" in config.controls:
        row.random_weights_accuracy = scores[(*key, "random_weights")]["accuracy"]
    if split.dev_folds:
        row.dev_accuracy = scores[(*key, "dev")]["accuracy"]
    if config.attention == "both":
        row.reference_accuracy = scores[(*key, "reference")]["accuracy"]
        main = features.main.layer(position, layer)[split.index]
        reference = features.stores["reference"].layer(position, layer)[split.index]
        row.max_abs_diff_vs_reference = float(np.abs(reference - main).max())
    return row


def _progress_bar(services: Services, total: int):
    from probe.pipeline.progress import progress_bar

    return progress_bar(services.progress, total=total, desc=f"{services.config.name}: probes", unit="fit")


def chosen_metrics(config: ExperimentConfig) -> dict[str, Callable]:
    """The registered metrics the config names (all of them when it names none)."""
    if config.metrics is None:
        entries = list(plugins.registry("metric").values())
    else:
        entries = [plugins.lookup("metric", name) for name in config.metrics]
    return {entry.name: _named_errors(entry) for entry in entries}


def _named_errors(entry: plugins.Registered) -> Callable:
    """A registered function whose exceptions name the plugin that registered it."""

    def call(*args, **kwargs):
        try:
            return entry.value(*args, **kwargs)
        except Exception as error:
            raise plugins.raised(entry, error) from error

    return call


# ---------------------------------------------------------------- reports


def write_reports(results: Results, output_dir: Path, run: RunData) -> None:
    """Each reporter the config names, in order, with the Results, the folder and the run's RunData; the
    summary last, so that it can say what the others did (``run.reporters`` notes each as it finishes)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = run.config.reporters
    seen = {}  # reporter → how many interventions its files list
    for name in [n for n in names if n != "summary"] + [n for n in names if n == "summary"]:
        status = _report(name, results, output_dir, run)
        run.reporters.note(name, *status)
        seen[name] = len(results.interventions)
    for name in REWRITTEN_AFTER_INTERVENTIONS:  # written before a later reporter intervened: again, once
        if name in seen and seen[name] < len(results.interventions):
            _report(name, results, output_dir, run)


# Reporters whose files list the run's interventions: written again if a later reporter adds one.
REWRITTEN_AFTER_INTERVENTIONS = ("json", "summary", "html")


def _report(name: str, results: Results, output_dir: Path, run: RunData) -> tuple[str, str]:
    """One reporter: (status, reason), "ran" or "skipped" with why; a failure raises, naming who failed."""
    entry = plugins.lookup("reporter", name)
    try:
        entry.value(results, output_dir, run)
    except plugins.ReporterSkipped as why:  # nothing to write for this run: it says why, the run goes on
        return "skipped", str(why)
    except (ConfigError, plugins.PluginError, DiskFull):
        raise
    except OSError as error:
        if is_disk_full(error):  # not the reporter's fault: the message names the full folder instead
            where = Path(error.filename) if error.filename else None
            raise disk_full(error, where.parent if where else output_dir, where.name if where else None,
                            written=size_or_none(where)) from error
        raise plugins.raised(entry, error) from error
    except Exception as error:  # the run is not published; the message names who failed
        raise plugins.raised(entry, error) from error
    return "ran", ""


def versions() -> dict:
    from importlib.metadata import version

    import sklearn
    import torch

    import probe

    return {"probe": probe.__version__, "torch": torch.__version__, "transformers": version("transformers"),
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}
