"""Model-family adapters: each knows where a family keeps its attention and how to speak its forward."""

from probe.adapters.base import AttentionSlot, bool_mask
from probe.adapters.bert import BertAdapter
from probe.adapters.gpt2 import GPT2Adapter
from probe.adapters.llama import LlamaAdapter

ADAPTERS = [GPT2Adapter(), BertAdapter(), LlamaAdapter()]


def adapter_for(model):
    """The adapter that handles ``model``, or a ValueError naming the supported model classes."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    supported = ", ".join(cls.__name__ for adapter in ADAPTERS for cls in adapter.model_classes)
    raise ValueError(f"probe cannot swap the attention of {type(model).__name__}; supported: {supported}")


__all__ = ["ADAPTERS", "AttentionSlot", "adapter_for", "bool_mask"]
