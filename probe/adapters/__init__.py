"""Model-family adapters: each knows where a family keeps its attention and how to speak its forward.

Adapters are registered through the ``register_adapters`` plugin hook, probe's own included
(probe/builtin/adapters.py). ``adapter_for`` asks the most recently registered first, so a plugin's
adapter wins over a built-in one for the models it matches; the universal adapter, which takes any
model whose attention dispatches through Hugging Face's attention interface, is asked last.
"""

from probe.adapters.base import AttentionSlot, bool_mask

UNIVERSAL = "universal"


def registered_adapters() -> list:
    """Every registered adapter in the order ``adapter_for`` asks them."""
    from probe.plugins import registry

    entries = list(registry("adapter").values())
    ordered = [e for e in reversed(entries) if e.name != UNIVERSAL] + [e for e in entries if e.name == UNIVERSAL]
    return [entry.value for entry in ordered]


def adapter_for(model):
    """The adapter that handles ``model`` (the one that swapped it, once swapped), or a ValueError naming
    what is supported."""
    state = getattr(model, "_probe_swap", None)
    if state is not None:
        return state.adapter
    adapters = registered_adapters()
    for adapter in adapters:
        if adapter.matches(model):
            return adapter
    full = ", ".join(cls.__name__ for a in adapters for cls in getattr(a, "model_classes", ()))
    raise ValueError(
        f"probe cannot swap the attention of {type(model).__name__}: it is not one of the classes probe "
        f"reimplements whole ({full}), and its attention does not dispatch through transformers' "
        "AttentionInterface (see `probe architectures` for every supported architecture)"
    )


__all__ = ["AttentionSlot", "adapter_for", "bool_mask", "registered_adapters"]
