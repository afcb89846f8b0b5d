"""The Python API: ``probe.run(config_or_path, **overrides) -> Results``, and swapping a model's attention
with the registered adapters (a plugin's asked before probe's own).

Every public function (``probe.__all__``) checks its arguments as it is called, as the command line checks
its options: a wrong one is an ArgumentError naming the function, the argument, what it got and what it
accepts, never an AttributeError from deep inside or a silent acceptance. The functions defined elsewhere
(probe.notebook, probe.core) are exported from here, checked.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.pipeline.config import ExperimentConfig, load_config, validate
from probe.pipeline.results import Results
from probe.errors import UserError
from probe.store.files import default_output


class ArgumentError(UserError, TypeError, ValueError):
    """A public function was called with an argument it does not accept (a TypeError or ValueError too,
    for code that catches those)."""


@dataclass(frozen=True)
class Accepts:
    """What one argument accepts: a test, and the words an error uses for it."""

    test: Callable[[Any], bool]
    words: str


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value).strip() != ""


def _is_model(value) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


def _strings(value) -> bool:
    """One string, or a non-empty list (or other iterable, not a mapping) of them."""
    if isinstance(value, str):
        return True
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        return False
    items = list(value)
    return bool(items) and all(isinstance(item, str) for item in items)


PATH = Accepts(_is_path, "a path (a non-empty str or pathlib.Path)")
OPTIONAL_PATH = Accepts(lambda v: v is None or _is_path(v), "a path (a non-empty str or pathlib.Path) or None")
FLAG = Accepts(lambda v: isinstance(v, bool), "True or False")
MODEL = Accepts(_is_model, "a loaded model (a torch.nn.Module, e.g. from transformers' from_pretrained)")
MODEL_OR_NAME = Accepts(lambda v: _is_path(v) or _is_model(v),
                        "a loaded model (torch.nn.Module) or a model's name or folder (str or pathlib.Path)")
TEXTS = Accepts(lambda v: _strings(v) and all(t.strip() for t in ([v] if isinstance(v, str) else v)),
                "a non-empty text (str) or a non-empty list of them")
NAMES = Accepts(_strings, "a hook point name or glob (str), or a non-empty list of them")
OPTIONAL_STR = Accepts(lambda v: v is None or isinstance(v, str), "a str or None")
POSITION_SPECS = Accepts(lambda v: v is None or isinstance(v, (str, dict)) or (isinstance(v, (list, tuple)) and v),
                         "None, a position (a name such as 'first', or {'index': N}) or a non-empty list of them")
CONFIG = Accepts(lambda v: _is_path(v) or isinstance(v, (dict, ExperimentConfig)),
                 "a YAML config's path (str or pathlib.Path), a dict of config fields, or an ExperimentConfig")
N_JOBS = Accepts(lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v != 0),
                 "None (all cores when the fits pay for it), a number of parallel fits ≥ 1, or a negative "
                 "number as joblib reads it (-1: all cores, -2: all but one)")


def checked(public_name: str, **accepted: Accepts):
    """A decorator: the function checks its arguments (by name, as ``accepted`` says) before it runs, and
    a call that does not fit its signature is an ArgumentError too."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def checked_call(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise ArgumentError(f"probe.{public_name}: {error}; it takes ({_parameters(signature)})") from None
            for name, accepts in accepted.items():
                if name in bound.arguments and not accepts.test(bound.arguments[name]):
                    raise ArgumentError(f"probe.{public_name}: argument {name!r} is {_shown(bound.arguments[name])}; "
                                        f"it accepts {accepts.words}")
            return function(*args, **kwargs)

        return checked_call

    return decorate


def _parameters(signature: inspect.Signature) -> str:
    """The parameters as a call writes them, without their annotations: ``config, *, output=None, …``."""
    bare = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                         for p in signature.parameters.values()],
                             return_annotation=inspect.Signature.empty)
    return str(bare)[1:-1]


def _shown(value) -> str:
    """A value as an error shows it: its repr, cut short, and its type."""
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(value).__name__})"


@checked("run", config=CONFIG, output=OPTIONAL_PATH, cache_dir=OPTIONAL_PATH, progress=FLAG, n_jobs=N_JOBS)
def run(
    config: str | Path | dict | ExperimentConfig,
    *,
    output: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    n_jobs: int | None = None,
    **overrides: Any,
) -> Results:
    """Run an experiment — a YAML path, a dict of fields or an ExperimentConfig — with any field overridden
    by keyword (``probe.run("experiments/mole.yaml", model="minilm-l6", folds=3)``); reports go to
    ``output`` (default runs/NAME), caching in ``cache_dir`` (default: ``$PROBE_CACHE``, else
    ``$XDG_CACHE_HOME/probe``, else ``~/.cache/probe``). ``n_jobs``: parallel probe fits, as joblib reads it (None: all cores
    when there are enough fits to pay for starting workers; -1: all cores; -2: all but one; 0 is refused).
    Returns the typed Results."""
    from probe.notebook import register_display
    from probe.pipeline.run import run_experiment

    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif isinstance(config, dict):
        config = validate({**config, **overrides})
    elif overrides:
        config = validate({**config.settings(), **overrides}, source=config.source)
    output = Path(output) if output is not None else default_output(config.name)
    register_display()
    return run_experiment(config, output, cache_dir=cache_dir, progress=progress, n_jobs=n_jobs)


@checked("swap_attention", model=MODEL, fast=FLAG)
def swap_attention(model, fast: bool = False):
    """Replace every attention module of ``model`` with probe's reimplementation, by the adapter the
    ``probe_adapter`` hook chooses (plugins asked first, probe's built-ins last); parameters are shared,
    not copied. ``fast``: see ``probe.set_fast_attention``. Returns the model, swapped in place."""
    from probe import plugins
    from probe.core import swap

    return swap.swap_attention(model, fast=fast, adapters=plugins.adapters_for(model))


@checked("swapped_attention", model=MODEL)
def swapped_attention(model):
    """``with probe.swapped_attention(model): ...`` runs the block on probe's attention, then restores."""
    from probe import plugins
    from probe.core import swap

    return swap.swapped_attention(model, adapters=plugins.adapters_for(model))


@checked("load_results", run_dir=PATH)
def load_results(run_dir) -> Results:
    """The Results a run wrote to ``run_dir/results.json`` (or that file itself); shown as its report in
    a notebook cell."""
    from probe.notebook import register_display
    from probe.pipeline import results

    register_display()
    return results.load_results(run_dir)


# ---------------------------------------------------------------- the public functions defined elsewhere


def _exported():
    """probe.notebook's and probe.core's public functions, each checking its arguments."""
    from probe import notebook
    from probe.core import hooks, swap
    from probe.pipeline.results import Results

    results = Accepts(lambda v: isinstance(v, Results), "a Results (from probe.run or probe.load_results)")
    functions = Accepts(callable, "a function (tensor, name) -> tensor or None")
    hook_functions = Accepts(lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and callable(f)
                                                                      for k, f in v.items()),
                             "a mapping of hook point names (str) to functions (tensor, name) -> tensor or None")
    return {
        "run_with_cache": checked("run_with_cache", model=MODEL_OR_NAME, text=TEXTS, names=NAMES,
                                  revision=OPTIONAL_STR, target=OPTIONAL_STR,
                                  positions=POSITION_SPECS)(notebook.run_with_cache),
        "attention": checked("attention", model=MODEL_OR_NAME, text=TEXTS, target=OPTIONAL_STR,
                             revision=OPTIONAL_STR)(notebook.attention),
        "plot": checked("plot", results=results, path=OPTIONAL_PATH)(notebook.plot),
        "add_hook": checked("add_hook", model=MODEL, name=Accepts(lambda v: isinstance(v, str) and v != "",
                                                                  "a hook point name or glob (a non-empty str)"),
                            fn=functions)(hooks.add_hook),
        "hooks": checked("hooks", model=MODEL, fns=hook_functions)(hooks.hooks),
        "capture": checked("capture", model=MODEL, names=NAMES, detach=FLAG)(hooks.capture),
        "hook_points": checked("hook_points", model=MODEL)(hooks.hook_points),
        "is_swapped": checked("is_swapped", model=MODEL)(swap.is_swapped),
        "restore_attention": checked("restore_attention", model=MODEL)(swap.restore_attention),
        "set_fast_attention": checked("set_fast_attention", model=MODEL, enabled=FLAG)(swap.set_fast_attention),
    }


def __getattr__(name: str):
    """``probe.api.run_with_cache`` and the others: built on first use (they import torch)."""
    exported = _exported_once()
    if name in exported:
        return exported[name]
    raise AttributeError(f"module 'probe.api' has no attribute {name!r}")


@functools.cache
def _exported_once() -> dict:
    return _exported()
