"""Every change a run made to the model's activations, as results.json records it under ``interventions``.

Two sources: plugins whose ``activation_hooks`` return hook functions (they change the vectors every layer's
probe is fitted on, so the whole run is intervened on), and reporters that intervene for their own
measurement (steering, erasure), which add their record with ``record``. Each record says what was done
(``kind``), by which plugin and version, with which options, at which hook points and layers, and, for a
reporter, a short summary of the effect it measured.

Which hook points an ``activation_hooks`` plugin touches is asked of the plugin itself, with the run's
model when it was loaded and otherwise with a weightless copy (on PyTorch's ``meta`` device): a run whose
vectors all came from the cache reads no weights, and its record must not depend on that.
"""

from __future__ import annotations

from typing import Any

from probe import plugins


def plugin_version(name: str) -> str | None:
    """The version of the distribution that ships plugin ``name`` (its module's ``__version__`` first);
    None for a plugin file that belongs to no installed distribution."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    plugin = plugins.get_plugin_manager().get_plugin(name)
    own = getattr(plugin, "__version__", None)
    if own is not None:
        return str(own)
    module = getattr(plugin, "__name__", None) or getattr(type(plugin), "__module__", "")
    for distribution in packages_distributions().get(module.split(".")[0], []):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


def record(kind: str, plugin: str, options: dict, hook_points: list[str] | None, *, layers: list[int] | None = None,
           blocks: list[int] | None = None, effect: dict | None = None, note: str | None = None) -> dict[str, Any]:
    """One entry of results.json's ``interventions``: ``layers`` the hidden states changed (steering at
    layer L), or ``blocks`` the blocks whose hook points were touched (an ablated head's block)."""
    entry = {"kind": kind, "plugin": plugin, "version": plugin_version(plugin), "options": options,
             "hook_points": hook_points}
    if layers is not None:
        entry["layers"] = layers
    if blocks is not None:
        entry["blocks"] = blocks
    if effect is not None:
        entry["effect"] = effect
    if note is not None:
        entry["note"] = note
    return entry


def activation_interventions(services) -> list[dict]:
    """A record per plugin whose ``activation_hooks`` returns hook functions for this run's config."""
    from probe.core.hooks import resolve

    config = services.config
    if not plugins.get_plugin_manager().hook.activation_hooks.get_hookimpls():
        return []
    model, weightless = _model_to_ask(services)
    try:
        answers = plugins.call_each("activation_hooks", model=model, config=config)
    except Exception as error:  # a plugin that needs real weights to answer: say so rather than guess
        if not weightless:
            raise
        return [record("activation_hooks", "(unknown)", dict(config.options), None,
                       note=f"not known: asking the plugins without weights failed ({type(error).__name__})")]
    entries = []
    for plugin, fns in answers:
        if not fns:
            continue
        points = sorted({point.name for name in fns for point in resolve(model, name)}, key=_point_order)
        entries.append(record("activation_hooks", plugin, dict(config.options), points, blocks=_blocks_of(points),
                              note="changes every layer's vectors: the whole run is intervened on"))
    return entries


def _model_to_ask(services):
    """The run's swapped model when it was loaded, else a weightless copy swapped the same way."""
    loaded = services.models.loaded_model
    if loaded is not None:
        return loaded, False
    import torch
    from transformers import AutoModel

    from probe.core.swap import swap_attention

    with torch.device("meta"):
        skeleton = AutoModel.from_config(services.model_config, attn_implementation="eager")
    swap_attention(skeleton, fast=services.attention_path == "fast", adapters=plugins.adapters_for(skeleton))
    return skeleton, True


def _blocks_of(points: list[str]) -> list[int]:
    """The blocks a list of hook points lies in (``blocks.{i}.…``)."""
    return sorted({int(name.split(".")[1]) for name in points if name.startswith("blocks.")})


def _point_order(name: str):
    parts = name.split(".")
    return (int(parts[1]), name) if parts[0] == "blocks" else (-1, name)
