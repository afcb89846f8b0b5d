"""The hooks a probe plugin can implement (pluggy project "probe").

A plugin is a module or object with functions marked ``@probe.hookimpl`` whose names match these.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("probe")
hookimpl = pluggy.HookimplMarker("probe")


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, loader)``; ``loader(**options)`` returns sense-labelled rows."""


@hookspec
def register_probes(register):
    """Register probes: ``register(name, factory)``; ``factory(seed, **options)`` returns an sklearn estimator."""


@hookspec
def register_metrics(register):
    """Register metrics: ``register(name, fn)``; ``fn(y_true, y_pred, labels)`` returns a number or a dict."""


@hookspec
def register_measures(register):
    """Register per-layer measures: ``register(name, fn)``; ``fn(X, y, probe, seed, **options)`` returns a
    dict of numbers about one layer's vectors (``probe``: an unfitted clone of the experiment's probe;
    ``options``: the config's ``options.<name>``). A config's ``measures:`` list picks them."""


@hookspec
def register_reporters(register):
    """Register reporters: ``register(name, fn)``; ``fn(results, output_dir, run)`` writes files into
    ``output_dir`` (a staging folder; every report of a run appears together). ``results``: the typed
    ``Results`` (``results.rows``, ``results.layers`` the tidy table). ``run``: the run's read-only
    ``RunData`` — ``run.services`` (``config``, ``load_model()`` the run's one model and tokenizer,
    ``cache_dir``, ``ranks``, ``make_probe()``…), ``run.rows.table``, ``run.splits.folds(subset)``,
    ``run.features.main.layer(position, layer)``, ``run.layers``. docs/plugins.md lists every field."""


@hookspec
def register_models(register):
    """Register model sources: ``register(name, resolve)``; ``resolve(revision)`` returns a path or hub name."""


@hookspec(firstresult=True)
def probe_adapter(model):
    """Return the adapter that swaps ``model``'s attention, or None to leave it to the next plugin.

    The first answer that is not None wins. A plugin is asked before probe's own adapters, which answer
    last (``trylast``); see probe/core/adapters/ for the protocol and FamilySpec for describing a family."""


@hookspec
def register_adapters(register):
    """Register model-family adapters: ``register(name, adapter)``. The older way to bring an adapter,
    kept for existing plugins: these are asked after every plugin's ``probe_adapter``, the most recently
    registered first, and before probe's own."""


@hookspec
def register_commands(cli):
    """Add commands to the ``probe`` command line (a click group)."""


@hookspec
def activation_hooks(model, config):
    """Return ``{hook point name: fn}`` to observe or replace tensors while an experiment runs the model."""


@hookspec
def experiment_started(config, output_dir):
    """Called once before an experiment extracts anything."""


@hookspec
def layer_result(config, layer, result):
    """Called with each layer's probe result (a typed ``LayerResult``; ``result.to_dict()`` is its row in
    results.json), in order, once the probes are fitted."""


@hookspec
def experiment_finished(config, results, output_dir):
    """Called once with the typed Results after every reporter has written its files."""
