"""Run one experiment: rows → target vectors per layer → probes and controls → results and reports."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe import plugins
from probe.config import ConfigError, ExperimentConfig
from probe.data import prepare
from probe.extract import FeatureStore, cache_key, data_fingerprint, extract
from probe.probes import cross_validate, folds, majority_baseline, shuffled_label_control

DEFAULT_CACHE = Path(".probe-cache")


@dataclass
class RunContext:
    """What reporters get besides the results: the config, the rows, and a way back to the model."""

    config: ExperimentConfig
    rows: object  # datasets.Dataset of prepared rows
    stores: dict[str, FeatureStore]
    load_model: Callable[[], tuple[torch.nn.Module, object]]
    cache_dir: Path = DEFAULT_CACHE

    @property
    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.rows["span_start"], self.rows["span_end"]))

    def make_probe(self) -> Callable[[], object]:
        return probe_factory(self.config)


def resolve_model(name: str, revision: str | None) -> str:
    """A registered model source's path or hub name; anything else is passed to from_pretrained as is."""
    sources = plugins.registry("model")
    if name in sources:
        return str(sources[name].value(revision))
    return name


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | Path,
    *,
    cache_dir: str | Path = DEFAULT_CACHE,
    progress: bool = True,
) -> dict:
    """Run ``config`` and write its reports to ``output_dir``; returns the results dict."""
    for path in config.plugins:
        plugins.load_plugin_file(path)
    output_dir = Path(output_dir)  # created when the first report is written, not before
    plugins.call_each("experiment_started", config=config, output_dir=output_dir)

    rows, skipped = load_dataset(config)
    model_path = resolve_model(config.model, config.revision)
    texts, spans = rows["text"], list(zip(rows["span_start"], rows["span_end"]))
    labels = np.asarray(rows["label"])
    groups = rows["group"]

    def loader(attention: str, random_weights: bool = False):
        return lambda: load_for_extraction(model_path, config, attention, random_weights)

    for index in _subsets(rows, config.split_by).values():  # fail before any model work, not after
        folds(labels[index], [groups[i] for i in index], config.folds, config.seed)
    n_layers = probe_layer_count(model_path, config)
    layers = list(range(n_layers + 1)) if config.layers == "all" else config.layers
    modes = ["reference", "reimplemented"] if config.attention == "both" else [config.attention]
    stores = {}
    for mode in modes:
        stores[mode] = _extract(loader(mode), config, model_path, texts, spans, layers, mode, cache_dir, progress)
    if "random_weights" in config.controls:
        stores["random_weights"] = _extract(
            loader(modes[-1], random_weights=True), config, model_path, texts, spans, layers, "random_weights",
            cache_dir, progress,
        )

    make_probe = probe_factory(config)
    metrics = chosen_metrics(config)
    main_mode = modes[-1]
    subsets = _subsets(rows, config.split_by)
    results = {
        "experiment": config.name,
        "description": config.description,
        "model": {"name": config.model, "path": model_path, "revision": config.revision, "layers": n_layers},
        "settings": config.settings(),
        "versions": versions(),
        "dataset": {"name": config.dataset_name, "rows": len(rows), "labels": sorted(set(labels.tolist())),
                    "skipped_rows": [str(p) for p in skipped]},
        "layers": [],
        "baselines": {},
    }
    for subset_name, index in subsets.items():
        y, g = labels[index], [groups[i] for i in index]
        if "majority" in config.controls:
            results["baselines"][_key("majority", subset_name)] = _summary(
                majority_baseline(y, g, config.folds, config.seed)
            )
        for position in config.positions:
            for layer in layers:
                X = stores[main_mode].layer(position, layer)[index]
                row = {"layer": layer, "position": position, "subset": subset_name}
                row.update(cross_validate(X, y, g, make_probe, config.folds, config.seed, metrics))
                if "shuffled" in config.controls:
                    control = shuffled_label_control(X, y, g, make_probe, config.folds, config.seed)
                    row["shuffled_accuracy"] = control["accuracy"]
                    row["selectivity"] = row["accuracy"] - control["accuracy"]
                if "random_weights" in config.controls:
                    Xr = stores["random_weights"].layer(position, layer)[index]
                    row["random_weights_accuracy"] = cross_validate(Xr, y, g, make_probe, config.folds, config.seed)["accuracy"]
                if config.attention == "both":
                    row["reference_accuracy"] = cross_validate(
                        stores["reference"].layer(position, layer)[index], y, g, make_probe, config.folds, config.seed
                    )["accuracy"]
                    row["max_abs_diff_vs_reference"] = float(
                        np.abs(stores["reference"].layer(position, layer)[index] - X).max()
                    )
                results["layers"].append(row)
                plugins.call_each("layer_result", config=config, layer=layer, result=row)
            layer0 = next(r for r in results["layers"] if r["layer"] == layers[0] and r["position"] == position
                          and r["subset"] == subset_name)
            results["baselines"][_key(f"layer{layers[0]}_{position}", subset_name)] = {"accuracy": layer0["accuracy"]}

    context = RunContext(config, rows, stores, loader(main_mode), Path(cache_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in config.reporters:
        plugins.lookup("reporter", name).value(results, output_dir, context)
    plugins.call_each("experiment_finished", config=config, results=results, output_dir=output_dir)
    return results


def load_dataset(config: ExperimentConfig):
    """The config's dataset, prepared and filtered; bad rows raise or are skipped per ``on_bad_rows``."""
    registered = plugins.lookup("dataset", config.dataset_name)
    ds = registered.value(**config.dataset_options)
    source = config.dataset_options.get("path", config.dataset_name)
    for column in config.filter:
        if column not in ds.column_names:
            raise ConfigError(
                f"{config.source}: field 'filter' names column {column!r}, which the dataset lacks; "
                f"its columns: {', '.join(ds.column_names)}"
            )

    def keep(row) -> bool:
        return all(row[column] in accepted for column, accepted in config.filter.items())

    return prepare(ds, source=str(source), n_folds=config.folds, on_error=config.on_bad_rows,
                   keep=keep if config.filter else None)


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
            raise plugins.PluginError(
                f"plugin {entry.plugin!r}: metric {entry.name!r} raised {type(error).__name__}: {error}"
            ) from error

    return call


def probe_factory(config: ExperimentConfig) -> Callable[[], object]:
    factory = plugins.lookup("probe", config.probe_name).value
    return lambda: factory(seed=config.seed, **config.probe_options)


def load_for_extraction(model_path: str, config: ExperimentConfig, attention: str, random_weights: bool = False):
    """The base model (no LM head) and its tokenizer; probe's attention swapped in unless ``reference``."""
    from transformers import AutoModel

    from probe.models import load_model, load_tokenizer, parse_dtype
    from probe.swap import swap_attention

    dtype = parse_dtype(config.dtype)
    model = load_model(model_path, revision=config.revision, dtype=dtype, model_class=AutoModel)
    if random_weights:  # the same architecture, fresh random weights: what structure alone gives
        torch.manual_seed(config.seed)
        model = AutoModel.from_config(model.config, dtype=dtype, attn_implementation="eager").eval()
    if attention == "reimplemented":
        swap_attention(model)
        attach_activation_hooks(model, config)
    return model, load_tokenizer(model_path, revision=config.revision)


def attach_activation_hooks(model, config: ExperimentConfig) -> list[str]:
    """Hook functions that plugins return from ``activation_hooks``, attached by hook point name."""
    from probe.hooks import add_hook

    attached = []
    for plugin, fns in plugins.call_each("activation_hooks", model=model, config=config):
        for name, fn in (fns or {}).items():
            try:
                add_hook(model, name, fn)
            except KeyError as error:
                raise plugins.PluginError(f"plugin {plugin!r} (activation_hooks): {error.args[0]}") from None
            attached.append(name)
    return attached


def activation_plugins() -> list[str]:
    """Plugins that may change activations: part of the cache key, so their runs never share a cache."""
    hook = plugins.get_plugin_manager().hook.activation_hooks
    return sorted(impl.plugin_name for impl in hook.get_hookimpls())


def probe_layer_count(model_path: str, config: ExperimentConfig) -> int:
    """The model's number of blocks, read from its config: the first place a bad model name shows."""
    from probe.models import load_config

    try:
        return load_config(model_path, revision=config.revision).num_hidden_layers
    except OSError as error:
        raise ConfigError(f"{config.source}: {model_load_error(config.model, error)}") from None


def model_load_error(name: str, error: OSError) -> str:
    """Why a model name led nowhere, with the names that do work offline."""
    known = ", ".join(sorted(plugins.registry("model")))
    reason = str(error).strip().splitlines()[0]
    return (
        f"cannot load model {name!r}: it is not a registered name ({known}), an existing local folder, "
        f"or a hub model reachable from here ({reason})"
    )


def _extract(load, config, model_path, texts, spans, layers, mode, cache_dir, progress) -> FeatureStore:
    key = cache_key({
        "model": model_path, "revision": config.revision, "weights": _weights_fingerprint(model_path),
        "data": data_fingerprint(texts, spans), "layers": layers, "pooling": config.pooling,
        "attention": mode, "dtype": config.dtype, "seed": config.seed if mode == "random_weights" else None,
        "activation_plugins": activation_plugins() if mode != "reference" else [], "options": config.options,
    })
    return extract(
        load, texts, spans, layers=layers, folder=Path(cache_dir) / "features" / key, pooling=config.pooling,
        batch_size=config.batch_size, progress=progress, description=f"{config.name}: {mode}",
    )


def _weights_fingerprint(model_path: str) -> str:
    """Size and mtime of a local model's files, so retraining a local folder invalidates the cache."""
    path = Path(model_path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def _subsets(rows, split_by: str | None) -> dict[str, np.ndarray]:
    everything = {"all": np.arange(len(rows))}
    if split_by is None:
        return everything
    values = np.asarray(rows[split_by], dtype=object)
    subsets = {str(v): np.flatnonzero(values == v) for v in sorted(set(values.tolist()), key=str)}
    return {**everything, **subsets}


def _key(name: str, subset: str) -> str:
    return name if subset == "all" else f"{name}[{subset}]"


def _summary(scores: dict) -> dict:
    return {k: scores[k] for k in ("accuracy", "accuracy_std", "macro_f1")}


def versions() -> dict:
    import sklearn
    import transformers

    import probe

    return {"probe": probe.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}
