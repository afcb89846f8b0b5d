"""Model-family adapters: each knows how to speak a family's forward, and reads where the family keeps
its blocks, norms, attention and projections from the family's spec (spec.py).

The core never looks adapters up itself: ``adapter_for`` and ``swap_attention`` take the adapters to ask,
in order. Without one, they ask probe's built-ins (``builtin_adapters``); the public
``probe.swap_attention`` hands over the one the plugin hook ``probe_adapter`` chose, a plugin's first.
"""

from probe.core.adapters.base import AttentionSlot, bool_mask
from probe.core.adapters.spec import (
    SPECS,
    FamilySpec,
    Numerics,
    ProjectionMap,
    SpecError,
)

UNIVERSAL = "universal"


def builtin_adapters() -> list:
    """probe's own adapters in the order they are asked: the hand-written families, the declarative
    mapped families, then the universal adapter, which takes any model whose attention dispatches through
    transformers' AttentionInterface."""
    from probe.core.adapters.bert import BertAdapter
    from probe.core.adapters.bloom import BloomAdapter
    from probe.core.adapters.falcon import FalconAdapter
    from probe.core.adapters.gpt2 import GPT2Adapter
    from probe.core.adapters.gpt_neo import GPTNeoAdapter
    from probe.core.adapters.interface import InterfaceAdapter
    from probe.core.adapters.mapped import MappedAdapter
    from probe.core.adapters.mpt import MptAdapter

    return [BloomAdapter(), FalconAdapter(), MptAdapter(), GPTNeoAdapter(), GPT2Adapter(), BertAdapter(),
            MappedAdapter(), InterfaceAdapter()]


def adapter_for(model, adapters=None):
    """The adapter that handles ``model`` (the one that swapped it, once swapped): the first of
    ``adapters`` (default: the built-ins) that matches it, or a ValueError naming what is supported."""
    state = getattr(model, "_probe_swap", None)
    if state is not None:
        return state.adapter
    adapters = builtin_adapters() if adapters is None else list(adapters)
    found = first_match(model, adapters)
    if found is None:
        raise unsupported(model, adapters)
    return found


def first_match(model, adapters):
    """The first of ``adapters`` that matches ``model``, or None."""
    return next((adapter for adapter in adapters if adapter.matches(model)), None)


def unsupported(model, adapters=None) -> ValueError:
    """The error for a model none of ``adapters`` (default: the built-ins) takes, naming what is supported."""
    adapters = builtin_adapters() if adapters is None else adapters
    full = ", ".join(cls.__name__ for a in adapters for cls in getattr(a, "model_classes", ()))
    return ValueError(
        f"probe cannot swap the attention of {type(model).__name__}: it is not one of the classes probe "
        f"reimplements whole ({full}), and its attention does not dispatch through transformers' "
        "AttentionInterface (see `probe architectures` for every supported architecture)"
    )


__all__ = [
    "SPECS", "AttentionSlot", "FamilySpec", "Numerics", "ProjectionMap", "SpecError", "adapter_for", "bool_mask",
    "builtin_adapters", "first_match", "unsupported",
]
