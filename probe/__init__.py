"""probe: a readable, hookable reimplementation of attention for probing Hugging Face language models.

Names are imported on first use (PEP 562), so ``import probe`` — and ``probe --help`` — do not pay for
torch, transformers and scikit-learn until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from probe.hookspecs import hookimpl

__version__ = "0.1.0"

# public name → the module that defines it (a function: probe.api, which exports it checking its arguments)
_LAZY = {
    "MaskedMultiHeadAttention": "probe.core.attention",
    "HookPoint": "probe.core.hooks",
    "add_hook": "probe.api",
    "capture": "probe.api",
    "hook_points": "probe.api",
    "is_swapped": "probe.api",
    "restore_attention": "probe.api",
    "set_fast_attention": "probe.api",
    "swap_attention": "probe.api",
    "swapped_attention": "probe.api",
    "run": "probe.api",
    "Results": "probe.pipeline.results",
    "LayerResult": "probe.pipeline.results",
    "load_results": "probe.api",
    "ActivationCache": "probe.notebook",
    "run_with_cache": "probe.api",
    "plot": "probe.api",
    # probe.attention is the notebook's attention viewer and probe.hooks the hook context manager: both are
    # functions only (the modules live in probe.core), so neither name means two things.
    "attention": "probe.api",
    "hooks": "probe.api",
}

__all__ = ["hookimpl", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probe' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from probe.api import load_results, run, swap_attention, swapped_attention
    from probe.core.attention import MaskedMultiHeadAttention
    from probe.core.hooks import HookPoint, add_hook, capture, hook_points, hooks
    from probe.core.swap import is_swapped, restore_attention, set_fast_attention
    from probe.notebook import ActivationCache, attention, plot, run_with_cache
    from probe.pipeline.results import LayerResult, Results
