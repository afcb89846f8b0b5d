"""Per-layer measures registered by plugins (``register_measures``): numbers about how a layer's vectors
encode the labels that are not a cross-validated accuracy — e.g. the MDL probe's code length. Each
(subset × position × layer × measure) runs as one joblib job with one BLAS thread, like the probe fits, so
the values do not depend on ``n_jobs``."""

from __future__ import annotations

from collections.abc import Hashable

from probe import plugins


def check(config) -> None:
    """An unknown measure name fails before any model work, listing the registered ones."""
    for name in config.measures:
        plugins.lookup("measure", name)


def evaluate(config, features, splits, layers: list[int], make_probe, n_jobs: int | None = None
             ) -> dict[Hashable, dict]:
    """``{(subset, position, layer): {measure name: {value name: number}}}`` for the config's measures, on
    the probed vectors (``features.main``); ``make_probe``: the run's probe factory."""
    from joblib import delayed
    from sklearn.base import clone

    from probe.scale.workers import run_parallel
    from probe.science.probes import n_jobs_for

    if not config.measures:
        return {}
    chosen = [plugins.lookup("measure", name) for name in config.measures]
    for entry in chosen:
        _ship_by_value(entry)
    store = features.main
    template = make_probe()
    jobs, keys, work = [], [], 0
    for split in splits:
        for position in config.positions:
            for layer in layers:
                X = store.layer(position, layer)[split.index]
                for entry in chosen:
                    options = config.options.get(entry.name, {})
                    jobs.append(delayed(_measure)(entry, X, split.y, clone(template), config.seed, options))
                    keys.append(((split.name, position, layer), entry.name))
                    work += X.size
    # Each job fits at least one probe on its rows: counted as one fit, workers start only for plenty of them.
    n_jobs = n_jobs_for(n_jobs, work)
    answers: dict[Hashable, dict] = {}
    for (key, name), values in zip(keys, run_parallel(jobs, n_jobs)):
        answers.setdefault(key, {})[name] = values
    return answers


def _ship_by_value(entry: plugins.Registered) -> None:
    """A plugin file's module is imported under a name the joblib workers can't import: its functions
    travel to them by value, not by reference."""
    import sys

    try:  # joblib ≥ 1.5 pickles with the cloudpickle package, older ones with their own copy
        from cloudpickle import register_pickle_by_value
    except ImportError:
        from joblib.externals.cloudpickle import register_pickle_by_value

    module = sys.modules.get(getattr(entry.value, "__module__", None) or "")
    if entry.plugin.startswith("file:") and module is not None:
        register_pickle_by_value(module)


def _measure(entry: plugins.Registered, X, y, probe, seed: int, options: dict) -> dict[str, float]:
    from probe.scale import workers

    try:
        with workers.one_thread():
            values = entry.value(X, y, probe, seed, **options)
        return {str(name): float(value) for name, value in values.items()}
    except Exception as error:
        raise plugins.raised(entry, error) from error
