"""probe: a readable, hookable reimplementation of attention for probing Hugging Face language models.

Names are imported on first use (PEP 562), so ``import probe`` — and ``probe --help`` — do not pay for
torch, transformers and scikit-learn until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from probe.hookspecs import hookimpl

__version__ = "0.1.0"

# public name → the module that defines it
_LAZY = {
    "MaskedMultiHeadAttention": "probe.attention",
    "HookPoint": "probe.hooks",
    "add_hook": "probe.hooks",
    "capture": "probe.hooks",
    "hook_points": "probe.hooks",
    "is_swapped": "probe.swap",
    "restore_attention": "probe.swap",
    "set_fast_attention": "probe.swap",
    "swap_attention": "probe.swap",
    "swapped_attention": "probe.swap",
    "run": "probe.api",
    "Results": "probe.results",
    "LayerResult": "probe.results",
    "load_results": "probe.results",
    "ActivationCache": "probe.notebook",
    "run_with_cache": "probe.notebook",
}

__all__ = ["attention", "hookimpl", "hooks", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probe' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``probe.hooks`` and ``probe.attention`` are functions (the hook context manager and the notebook's
    attention viewer), though probe.hooks and probe.attention are also submodules: importing a submodule
    must not replace the function with the module (``from probe.attention import …`` still works)."""

    @property
    def hooks(self):
        return importlib.import_module("probe.hooks").hooks

    @hooks.setter
    def hooks(self, value) -> None:  # the import system setting the submodule: keep the function
        pass

    @property
    def attention(self):
        return importlib.import_module("probe.notebook").attention

    @attention.setter
    def attention(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"attention", "hooks"})


if TYPE_CHECKING:
    from probe.api import run
    from probe.attention import MaskedMultiHeadAttention
    from probe.hooks import HookPoint, add_hook, capture, hook_points, hooks
    from probe.notebook import ActivationCache, attention, run_with_cache
    from probe.results import LayerResult, Results, load_results
    from probe.swap import is_swapped, restore_attention, set_fast_attention, swap_attention, swapped_attention
