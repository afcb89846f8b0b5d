"""probe: a readable, hookable reimplementation of attention for probing Hugging Face language models."""

from probe.attention import MaskedMultiHeadAttention
from probe.hooks import HookPoint, add_hook, capture, hook_points, hooks
from probe.hookspecs import hookimpl
from probe.swap import is_swapped, restore_attention, set_fast_attention, swap_attention, swapped_attention

__version__ = "0.1.0"

__all__ = [
    "HookPoint",
    "MaskedMultiHeadAttention",
    "add_hook",
    "capture",
    "hook_points",
    "hookimpl",
    "hooks",
    "is_swapped",
    "restore_attention",
    "set_fast_attention",
    "swap_attention",
    "swapped_attention",
]
