"""A plugin that adds a model family through ``register_adapters``, without touching probe.

It takes Mistral — which probe's built-ins run on the universal path — onto the *full* path, reusing
the Llama adapter (Mistral's attention has the same projections, rotary and cache plumbing).
"""

from transformers.models.mistral import modeling_mistral as hf_mistral

import probe
from probe.adapters.llama import LlamaAdapter


class MistralFullAdapter(LlamaAdapter):
    name = "mistral-full"
    model_classes = (hf_mistral.MistralModel, hf_mistral.MistralForCausalLM)
    attention_class = hf_mistral.MistralAttention

    def slots(self, model):
        return [
            slot.__class__(slot.parent, slot.attr, slot.prefix, hf_mistral.MistralAttention)
            for slot in super().slots(model)
        ]


@probe.hookimpl
def register_adapters(register):
    register("mistral-full", MistralFullAdapter())
