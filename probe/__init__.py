"""probe: a readable, hookable reimplementation of attention for probing Hugging Face language models."""

from probe.attention import MaskedMultiHeadAttention
from probe.hooks import HookPoint, add_hook, capture, hook_points, hooks
from probe.hookspecs import hookimpl
from probe.swap import is_swapped, restore_attention, set_fast_attention, swap_attention, swapped_attention

# Last, on purpose: the name probe.attention is the notebook function, and binding it after the
# probe.attention module has loaded keeps it that way (``from probe.attention import …`` still works).
from probe.api import ActivationCache, attention, run_with_cache  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "HookPoint",
    "MaskedMultiHeadAttention",
    "add_hook",
    "attention",
    "capture",
    "hook_points",
    "hookimpl",
    "hooks",
    "is_swapped",
    "restore_attention",
    "run_with_cache",
    "set_fast_attention",
    "swap_attention",
    "swapped_attention",
]
