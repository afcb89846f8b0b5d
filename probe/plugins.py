"""Plugin discovery and the registries built from the register_* hooks.

Plugins come from: probe's own built-ins, installed packages (entry-point group ``probe``), and
local files (an experiment's ``plugins:`` list or ``--plugins-dir``). ``PROBE_PLUGINS`` restricts
installed plugins to a comma-separated list of entry-point names (empty: none). Nothing is imported until
the plugin manager is first asked for (a registry, a hook): listing commands never loads a plugin.

Installed packages add commands to ``probe`` through their own entry-point group, ``probe.commands``
(name → a click command): the command line lists them from the packages' metadata and imports one only
when it is run or its help is shown.

An installed plugin that fails to load is named in a PluginWarning and skipped, so that one broken
package never keeps probe's built-ins from working; one that ``PROBE_PLUGINS`` asks for by name is a
PluginError, as is a local plugin file, which an experiment or the command line asked for.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from probe import hookspecs
from probe.errors import UserError

BUILTIN_PLUGINS = (
    "probe.builtin.datasets",
    "probe.builtin.probes",
    "probe.builtin.metrics",
    "probe.builtin.reporters",
    "probe.builtin.models",
    "probe.builtin.adapters",
)
ENTRY_POINT_GROUP = "probe"
COMMANDS_GROUP = "probe.commands"
RESTRICT_ENV = "PROBE_PLUGINS"

# Registry kind → the hook that fills it.
REGISTRIES = {
    "dataset": "register_datasets",
    "probe": "register_probes",
    "metric": "register_metrics",
    "measure": "register_measures",
    "reporter": "register_reporters",
    "model": "register_models",
    "adapter": "register_adapters",
}


class PluginError(UserError, RuntimeError):
    """A plugin failed to load, raised inside a hook, or clashed with another plugin."""


class ReporterSkipped(Exception):  # noqa: N818 - a signal, not an error: the run goes on
    """Raised by a reporter that has nothing to write for this run; its message says why. The run goes on,
    and summary.md lists the reporter as skipped, with the reason."""


class PluginWarning(UserWarning):
    """An installed plugin nobody asked for by name failed to load and was skipped."""


@dataclass
class Registered:
    name: str
    value: Any
    plugin: str
    kind: str = ""  # dataset, probe, metric, measure, reporter, …: the registry it came from


_manager: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and installed plugins loaded on first use."""
    global _manager
    if _manager is None:
        _manager = _new_manager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget every loaded plugin (tests use this to start clean)."""
    global _manager
    _manager = None


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("probe")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        _register(pm, importlib.import_module(module_name), module_name)
    _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    allowed = os.environ.get(RESTRICT_ENV)
    allowed = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    installed = entry_points(group=ENTRY_POINT_GROUP)
    unknown = sorted((allowed or set()) - {entry_point.name for entry_point in installed})
    if unknown:  # a typo would otherwise switch the plugin off without a word
        names = ", ".join(sorted(entry_point.name for entry_point in installed)) or "none"
        raise PluginError(f"{RESTRICT_ENV} names {unknown[0]!r}, which is not an installed plugin; "
                          f"installed: {names} (an empty {RESTRICT_ENV} switches them all off)")
    for entry_point in installed:
        if allowed is not None and entry_point.name not in allowed:
            continue
        try:
            _register(pm, _load(entry_point), entry_point.name)
        except PluginError as error:
            if allowed is not None:  # asked for by name: failing quietly would run without it
                raise
            warnings.warn(f"{error}; skipped (set {RESTRICT_ENV} to choose the installed plugins)",
                          PluginWarning, stacklevel=2)


def _load(entry_point):
    try:
        return entry_point.load()
    except Exception as error:
        raise PluginError(f"installed plugin {entry_point.name!r} ({entry_point.value}) failed to import: "
                          f"{error}") from error


def declared_commands() -> dict:
    """The commands installed packages declare (entry-point group ``probe.commands``), by name: entry
    points read from the packages' metadata, nothing imported."""
    from importlib.metadata import entry_points

    return {entry_point.name: entry_point for entry_point in entry_points(group=COMMANDS_GROUP)}


def load_command(entry_point):
    """The click command a ``probe.commands`` entry point names; a PluginError when it fails to import or
    is not a click command."""
    import click

    try:
        command = entry_point.load()
    except Exception as error:
        raise PluginError(f"command {entry_point.name!r} ({entry_point.value}, entry-point group "
                          f"{COMMANDS_GROUP}) failed to import: {type(error).__name__}: {error}") from error
    if not isinstance(command, click.Command):
        raise PluginError(f"command {entry_point.name!r} ({entry_point.value}, entry-point group {COMMANDS_GROUP}) "
                          f"is a {type(command).__name__}, not a click command")
    return command


def load_plugin_file(path: str | Path) -> str:
    """Import a local plugin file and register it; returns its plugin name."""
    path = Path(path).resolve()
    pm = get_plugin_manager()
    name = f"file:{path}"
    if pm.get_plugin(name) is not None:
        return name
    if not path.is_file():
        raise PluginError(f"plugin file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"probe_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise PluginError(f"plugin file {path} failed to import: {type(error).__name__}: {error}") from error
    sys.modules.setdefault(spec.name, module)
    _register(pm, module, name)
    return name


def load_plugins_dir(folder: str | Path) -> list[str]:
    """Load every ``*.py`` file of a folder as a plugin (files starting with ``_`` are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PluginError(f"plugins folder {folder} does not exist")
    return [load_plugin_file(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]


def register_plugin(plugin: Any, name: str) -> str:
    """Register an in-memory plugin object or module (what tests and notebooks use)."""
    _register(get_plugin_manager(), plugin, name)
    return name


def unregister_plugin(name: str) -> None:
    get_plugin_manager().unregister(name=name)


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()  # a hookimpl whose name matches no hookspec is a typo, not a no-op
    except pluggy.PluginValidationError as error:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(f"plugin {name!r} is not valid: {error}") from error
    except ValueError as error:
        raise PluginError(f"plugin {name!r} could not be registered: {error}") from error
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                # pluggy calls impl.function(*args): wrapping it lets each call know its plugin, so
                # an error names plugin and hook and register() knows who registers.
                object.__setattr__(impl, "function", _attributed(impl.function, name, caller.name))


# The plugin whose hook implementation is running, and where call_each collects (plugin, result) pairs.
_current_plugin: contextvars.ContextVar[str] = contextvars.ContextVar("probe_current_plugin", default="?")
_collected: contextvars.ContextVar[list | None] = contextvars.ContextVar("probe_collected", default=None)


def raised(entry: Registered, error: Exception) -> PluginError:
    """The error for a registered dataset, metric, measure or reporter that raised: it names the plugin,
    what it registered, and the exception."""
    return PluginError(f"plugin {entry.plugin!r}: {entry.kind} {entry.name!r} raised {type(error).__name__}: {error}")


def _attributed(function, plugin_name: str, hook_name: str):
    @functools.wraps(function)
    def call(*args, **kwargs):
        collected = _collected.get()
        tokens = _current_plugin.set(plugin_name), _collected.set(None)  # a nested hook call collects apart
        try:
            result = function(*args, **kwargs)
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(
                f"plugin {plugin_name!r} raised in hook {hook_name}: {type(error).__name__}: {error}"
            ) from error
        finally:
            _current_plugin.reset(tokens[0])
            _collected.reset(tokens[1])
        if collected is not None:
            collected.append((plugin_name, result))
        return result

    return call


def registry(kind: str) -> dict[str, Registered]:
    """Everything registered under ``kind`` (dataset, probe, metric, reporter, model), by name."""
    hook_name = REGISTRIES[kind]
    found: dict[str, Registered] = {}

    def register(name: str, value: Any) -> None:
        plugin = _current_plugin.get()
        if name in found:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {found[name].plugin!r} and by {plugin!r}"
            )
        found[name] = Registered(name, value, plugin, kind)

    getattr(get_plugin_manager().hook, hook_name)(register=register)
    return found


def lookup(kind: str, name: str) -> Registered:
    """One registered thing by name, or an error listing the names that exist."""
    entries = registry(kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise PluginError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return entries[name]


def call_each(hook_name: str, **kwargs) -> list[tuple[str, Any]]:
    """``pm.hook.<hook_name>(**kwargs)`` — pluggy's order, tryfirst/trylast and wrappers included —
    as (plugin name, result) pairs in call order, None results too."""
    token = _collected.set([])
    try:
        getattr(get_plugin_manager().hook, hook_name)(**kwargs)
        return _collected.get()
    finally:
        _collected.reset(token)


def adapter_for(model):
    """The adapter that swaps ``model``: the first answer of the ``probe_adapter`` hook (plugins asked
    before probe's built-ins), or the one that swapped it; a ValueError naming what is supported when
    none takes it."""
    from probe.core import adapters as core_adapters

    if getattr(model, "_probe_swap", None) is not None:
        return core_adapters.adapter_for(model)
    chosen = get_plugin_manager().hook.probe_adapter(model=model)
    if chosen is None:
        raise core_adapters.unsupported(model)
    return chosen


def adapters_for(model) -> list:
    """What the core's ``swap_attention(model, adapters=…)`` is to ask: the adapter ``adapter_for`` chose."""
    return [adapter_for(model)]


def describe() -> list[tuple[str, list[str]]]:
    """(plugin name, hooks it implements) for every loaded plugin, built-ins first."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        rows.append((name, hooks))
    return rows


def registrations() -> list[tuple[str, dict[str, list[str]]]]:
    """(plugin name, {kind: names it registers}) for every loaded plugin, built-ins first: each plugin's
    register hooks called alone (pluggy's subset hook caller) into a collector. Kinds are the registries'
    (dataset, probe, …) plus ``command`` for ``register_commands``; a plugin's hooks that register
    nothing of a kind leave that kind out."""
    pm = get_plugin_manager()
    listed = pm.list_name_plugin()
    rows = []
    for name, plugin in listed:
        others = [other for _, other in listed if other is not plugin]
        implemented = {caller.name for caller in pm.get_hookcallers(plugin) or []}
        found = {}
        for kind, hook_name in REGISTRIES.items():
            if hook_name in implemented:
                names: list[str] = []
                pm.subset_hook_caller(hook_name, others)(register=lambda name, _value, into=names: into.append(name))
                found[kind] = names
        if "register_commands" in implemented:
            found["command"] = _commands_of(pm.subset_hook_caller("register_commands", others))
        rows.append((name, {kind: names for kind, names in found.items() if names}))
    return rows


def _commands_of(hook_caller) -> list[str]:
    """The subcommands a ``register_commands`` hook adds, added to an empty click group of its own."""
    import click

    group = click.Group()
    hook_caller(cli=group)
    return sorted(group.commands)
